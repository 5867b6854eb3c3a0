"""`fairl triage`: decide on the findings of `runs/<name>/audit/` (pipeline.audit.triage), by an
oracle judge, through a spreadsheet, or on a local web page; every way appends to
`runs/<name>/triage/triage.jsonl`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.artifacts import require_stage
from pipeline.audit.common import Judge, judge_for, triage_path
from pipeline.audit.page import TriagePage
from pipeline.audit.page import serve as serve_page
from pipeline.audit.triage import (
    append,
    export_csv,
    import_csv,
    load_findings,
    oracle_decisions,
    start_log,
)
from pipeline.config import ExperimentConfig
from pipeline.errors import FairlError

log = logging.getLogger("fairl.triage")


def _findings(cfg: ExperimentConfig):
    audit_dir = cfg.stage_dir("audit")
    require_stage(audit_dir, "audit", "audit")
    return load_findings(audit_dir)


def oracle(cfg: ExperimentConfig, judge_spec: str) -> Path:
    """The judge `judge_spec` decides every finding not yet decided by a person or by this
    judge: a decision of another oracle is decided again (the last one counts)."""
    findings, sha = _findings(cfg)
    path = triage_path(cfg)
    decided = start_log(path, sha)
    me = f"oracle:{judge_spec}"
    kept = [k for k, d in decided.items() if d.via != "oracle" or d.who == me]
    todo = findings[~findings["finding_id"].isin(kept)]
    judge: Judge = judge_for(cfg, judge_spec)
    texts = list(dict.fromkeys([*todo["text"], *[s for s in todo["source"] if s]]))
    toxic, _ = judge(texts) if texts else (np.zeros(0, bool), None)
    verdicts = dict(zip(texts, map(bool, toxic), strict=True))
    n = append(path, oracle_decisions(todo, sha, verdicts, judge_spec))
    log.info(
        "triage: the oracle %s decided %d findings (%d decided before by a person or by it)",
        judge_spec, n, len(kept),
    )  # fmt: skip
    return path


def export(cfg: ExperimentConfig, out: Path) -> Path:
    findings, sha = _findings(cfg)
    return export_csv(findings, start_log(triage_path(cfg), sha), out)


def import_(cfg: ExperimentConfig, src: Path, who: str | None = None) -> Path:
    findings, sha = _findings(cfg)
    path = triage_path(cfg)
    start_log(path, sha)  # a log of an earlier audit is moved aside before anything is appended
    n = append(path, import_csv(src, findings, sha, who))
    log.info("triage: %d decisions read from %s", n, src)
    return path


def serve(cfg: ExperimentConfig, port: int, who: str | None = None) -> Path:
    """The triage web page (pipeline.audit.page), until interrupted."""
    try:
        import gradio  # noqa: F401  (the optional extra)
    except ImportError:
        raise FairlError(
            "the triage page needs Gradio", hint="pip install 'fairl[ui]' (or: pip install gradio)"
        ) from None
    audit_dir = cfg.stage_dir("audit")
    require_stage(audit_dir, "audit", "audit")
    start_log(triage_path(cfg), load_findings(audit_dir)[1])
    page = TriagePage(audit_dir, triage_path(cfg), who)
    log.info("triage: serving %d findings on http://127.0.0.1:%d/", len(page.findings), port)
    serve_page(page, port=port, block=True)
    return triage_path(cfg)
