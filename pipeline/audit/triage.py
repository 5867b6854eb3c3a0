"""A person's verdict on each audit finding (`fairl triage`): accept (a real failure of the
reward), reject (the reward is right), or relabel (give the right label).

Every way in (the web page, a CSV file, an oracle judge) appends to one log,
`runs/<name>/triage/triage.jsonl`, one JSON object per decision:

    {"finding_id", "decision", "label" (relabel: "toxic" or "clean"), "who", "when" (UTC, ISO),
     "via" (web | csv | oracle), "audit_sha256" (of the findings.parquet decided on)}

The last decision on a finding counts (a person may change their mind; the log keeps both).
A decision on a finding of another audit is refused: findings are identified by their audit.
When the audit is redone (other probes, another reward), `start_log` moves the old log aside,
named by the audit it decided on, and a new one begins: nothing decided is lost.
"""

from __future__ import annotations

import csv
import datetime as _dt
import getpass
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.audit.probes import NEUTRAL
from pipeline.errors import DataError

log = logging.getLogger("fairl.triage")
DECISIONS = ("accept", "reject", "relabel")
LABELS = ("toxic", "clean")
CSV_COLUMNS = ("finding_id", "family", "kind", "text", "source", "edit", "reward", "judge_score",
               "judge_toxic", "gap", "decision", "label")  # fmt: skip


@dataclass(frozen=True)
class Decision:
    finding_id: str
    decision: str
    label: str | None
    who: str
    when: str
    via: str
    audit_sha256: str


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def load_findings(audit_dir: Path) -> tuple[pd.DataFrame, str]:
    """(findings, sha256 of findings.parquet) of a published audit."""
    path = Path(audit_dir) / "findings.parquet"
    if not path.is_file():
        raise DataError(f"{audit_dir} holds no findings.parquet", hint="run `fairl audit` first")
    return pd.read_parquet(path), file_sha256(path)


def make_decision(
    findings: pd.DataFrame,
    audit_sha: str,
    finding_id: str,
    decision: str,
    label: str | None = None,
    who: str | None = None,
    via: str = "web",
) -> Decision:
    """One checked decision: the finding exists, the decision is one of DECISIONS, and a
    relabel gives a label."""
    if finding_id not in set(findings["finding_id"]):
        raise DataError(
            f"no finding {finding_id!r} in this audit",
            hint="decide on the findings of the audit the triage is for",
        )
    if decision not in DECISIONS:
        raise DataError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
    if label and decision != "relabel":
        raise DataError(
            f"a label ({label!r}) goes with the decision relabel only, not {decision}",
            hint="leave the label empty, or make the decision relabel",
        )
    if decision == "relabel" and label not in LABELS:
        raise DataError(
            f"a relabel needs a label ({' or '.join(LABELS)}), got {label!r}",
            hint="say what the right verdict on the text is",
        )
    return Decision(
        finding_id,
        decision,
        label if decision == "relabel" else None,
        who or whoami(),
        now(),
        via,
        audit_sha,
    )


def append(path: Path, decisions: Iterable[Decision]) -> int:
    """Append decisions to the log (one line each, flushed): nothing decided is ever lost."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "a", encoding="utf-8") as f:
        for d in decisions:
            f.write(json.dumps(asdict(d)) + "\n")
            n += 1
        f.flush()
    return n


class OtherAudit(DataError):
    """A triage log of another audit than the one at hand."""

    def __init__(self, message: str, other_sha: str, hint: str):
        super().__init__(message, hint=hint)
        self.other_sha = other_sha


def read_log(path: Path, audit_sha: str) -> dict[str, Decision]:
    """The decisions in force (the last one per finding) of the audit `audit_sha`. A line of
    another audit is an error naming the line (`OtherAudit`): a triage belongs to one audit. A
    line that is no decision (a hand edit gone wrong: an unknown decision, a relabel without a
    label) is an error too, never skipped."""
    out: dict[str, Decision] = {}
    if not Path(path).is_file():
        return out
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = Decision(**json.loads(line))
        except (ValueError, TypeError) as e:
            raise DataError(f"{path}:{i} is not a triage decision ({e})") from None
        if d.audit_sha256 != audit_sha:
            raise OtherAudit(
                f"{path}:{i} decides on another audit (findings sha256 {d.audit_sha256[:12]}, "
                f"this audit's {audit_sha[:12]})",
                d.audit_sha256,
                hint="run `fairl triage` on this audit (it starts a new log and keeps the old "
                "one beside it)",
            )
        if d.decision not in DECISIONS or (d.decision == "relabel") != (d.label in LABELS):
            raise DataError(
                f"{path}:{i}: decision {d.decision!r} with label {d.label!r} is not a triage "
                f"decision (one of {', '.join(DECISIONS)}; a label, {' or '.join(LABELS)}, "
                "with relabel only)"
            )
        out[d.finding_id] = d
    return out


def start_log(path: Path, audit_sha: str) -> dict[str, Decision]:
    """`read_log`, except that a log of another audit (the audit was redone since) is moved
    aside to `<stem>.<its audit sha256[:12]>[-n].jsonl` beside it and a new log begins."""
    try:
        return read_log(path, audit_sha)
    except OtherAudit as e:
        path = Path(path)
        dest = path.with_name(f"{path.stem}.{e.other_sha[:12]}.jsonl")
        n = 1
        while dest.exists():
            dest = path.with_name(f"{path.stem}.{e.other_sha[:12]}-{n}.jsonl")
            n += 1
        os.replace(path, dest)
        log.warning(
            "triage: %s decided on an earlier audit (findings %s): kept as %s; a new log begins",
            path, e.other_sha[:12], dest.name,
        )  # fmt: skip
        return {}


# ------------------------------------------------------------------------------ the ways in
def oracle_decisions(
    findings: pd.DataFrame, audit_sha: str, verdicts: dict[str, bool], name: str
) -> list[Decision]:
    """The oracle judge decides (`verdicts`: its toxic-or-not on every finding text and
    neutral source). A verdict finding is accepted when the oracle contradicts the reward's
    verdict, a neutral one when the oracle gives the edit and its source the same verdict (the
    edit was neutral: the reward should not have moved); otherwise rejected."""
    out = []
    for row in findings.itertuples(index=False):
        if row.kind == NEUTRAL:
            ok = verdicts[row.text] == verdicts[row.source]
        else:
            ok = verdicts[row.text] != bool(row.reward_toxic)
        out.append(
            make_decision(
                findings,
                audit_sha,
                row.finding_id,
                "accept" if ok else "reject",
                who=f"oracle:{name}",
                via="oracle",
            )  # fmt: skip
        )
    return out


def export_csv(findings: pd.DataFrame, decided: dict[str, Decision], path: Path) -> Path:
    """The findings as a spreadsheet: decision and label columns to fill in (pre-filled with
    the decisions in force)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for row in findings.itertuples(index=False):
            d = decided.get(row.finding_id)
            values = [getattr(row, c) for c in CSV_COLUMNS[:-2]]
            values = [f"{v:.6g}" if isinstance(v, (float, np.floating)) else v for v in values]
            w.writerow([*values, d.decision if d else "", (d.label or "") if d else ""])
    os.replace(tmp, path)  # a spreadsheet open on the old file never sees a half-written one
    return path


def import_csv(
    path: Path, findings: pd.DataFrame, audit_sha: str, who: str | None = None
) -> list[Decision]:
    """The decisions filled in a spreadsheet made by `export_csv` (rows left blank are
    undecided). Every row is checked before any is taken. A UTF-8 byte-order mark (what
    spreadsheets write as "CSV UTF-8") is read as such."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows, columns = list(reader), reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if not {"finding_id", "decision"} <= set(columns):
        raise DataError(
            f"{path} has no finding_id and decision columns",
            hint="fill in the file `fairl triage --export` wrote",
        )
    out = []
    for i, r in enumerate(rows, 2):
        decision = (r.get("decision") or "").strip().lower()
        if not decision:
            continue
        try:
            out.append(
                make_decision(
                    findings,
                    audit_sha,
                    r["finding_id"].strip(),
                    decision,
                    (r.get("label") or "").strip().lower() or None,
                    who,
                    via="csv",
                )  # fmt: skip
            )
        except DataError as e:
            raise DataError(f"{path}, line {i}: {e.message}", hint=e.hint) from None
    return out
