"""A person's verdict on each audit finding (`fairl triage`): accept (a real failure of the
reward), reject (the reward is right), or relabel (give the right label).

Every way in (the web page, a CSV file, an oracle judge) appends to one log,
`runs/<name>/triage/triage.jsonl`, one JSON object per decision:

    {"finding_id", "decision", "label" (relabel: "toxic" or "clean"), "who", "when" (UTC, ISO),
     "via" (web | csv | oracle), "audit_sha256" (of the findings.parquet decided on)}

The last decision on a finding counts (a person may change their mind; the log keeps both).
A decision on a finding of another audit is refused: findings are identified by their audit.
"""

from __future__ import annotations

import csv
import datetime as _dt
import getpass
import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.audit.probes import NEUTRAL
from pipeline.errors import DataError

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


def read_log(path: Path, audit_sha: str) -> dict[str, Decision]:
    """The decisions in force (the last one per finding) of the audit `audit_sha`. A line of
    another audit is an error naming the line: a triage belongs to one audit."""
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
            raise DataError(
                f"{path}:{i} decides on another audit (findings sha256 {d.audit_sha256[:12]}, "
                f"this audit's {audit_sha[:12]})",
                hint="triage the audit the log was made for, or start a new triage log",
            )
        out[d.finding_id] = d
    return out


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
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for row in findings.itertuples(index=False):
            d = decided.get(row.finding_id)
            values = [getattr(row, c) for c in CSV_COLUMNS[:-2]]
            values = [f"{v:.6g}" if isinstance(v, (float, np.floating)) else v for v in values]
            w.writerow([*values, d.decision if d else "", (d.label or "") if d else ""])
    return Path(path)


def import_csv(
    path: Path, findings: pd.DataFrame, audit_sha: str, who: str | None = None
) -> list[Decision]:
    """The decisions filled in a spreadsheet made by `export_csv` (rows left blank are
    undecided). Every row is checked before any is taken."""
    try:
        rows = list(csv.DictReader(open(path, newline="", encoding="utf-8")))  # noqa: SIM115
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if rows and not {"finding_id", "decision"} <= set(rows[0]):
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
