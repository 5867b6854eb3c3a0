"""The triage web page (`fairl triage --serve`): Gradio, the ecosystem's UI library for model
demos and labelling, installed with the optional extra `fairl[ui]`.

`TriagePage` holds the page's state and its callbacks (load the findings, show one, decide,
save), with no Gradio in it, so tests drive the page's API directly; `build` lays it out as a
`gr.Blocks`. Every decision is appended to the triage log at once (nothing is lost when the tab
is closed). Keyboard: a accept, r reject, t relabel toxic, c relabel clean, n next undecided.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pandas as pd

from pipeline.audit.triage import append, load_findings, make_decision, read_log
from pipeline.errors import DataError, FairlError

ALL = "all families"
SHORTCUTS = {"a": "accept", "r": "reject", "t": "relabel-toxic", "c": "relabel-clean", "n": "next"}
_KEYS_JS = (
    "() => { document.addEventListener('keydown', (e) => {"
    " if (['INPUT', 'TEXTAREA'].includes(e.target.tagName)) return;"
    " const ids = " + str({k: f"btn-{v}" for k, v in SHORTCUTS.items()}).replace("'", '"') + ";"
    " const el = ids[e.key] && document.getElementById(ids[e.key]);"
    " if (el) { e.preventDefault(); el.click(); } }); }"
)


def diff_spans(source: str, text: str) -> list[tuple[str, str | None]]:
    """Word spans of `text` against `source`: ("word", "added"), removed words as
    ("word", "removed"), unchanged ones with None (gr.HighlightedText's value)."""
    a, b = source.split(), text.split()
    out: list[tuple[str, str | None]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b).get_opcodes():
        if op == "equal":
            out.append((" ".join(b[j1:j2]) + " ", None))
            continue
        if i2 > i1:
            out.append((" ".join(a[i1:i2]) + " ", "removed"))
        if j2 > j1:
            out.append((" ".join(b[j1:j2]) + " ", "added"))
    return out


class TriagePage:
    """The state behind the page: the audit's findings, the decisions in force, the log."""

    def __init__(self, audit_dir: Path, log_path: Path, who: str | None = None):
        self.findings, self.sha = load_findings(audit_dir)
        self.log_path, self.who = Path(log_path), who
        self.decided = read_log(self.log_path, self.sha)

    def families(self) -> list[str]:
        return [ALL, *dict.fromkeys(self.findings["family"])]

    def table(self, family: str = ALL) -> pd.DataFrame:
        """The findings (of one family), with the decision in force on each."""
        df = self.findings if family == ALL else self.findings[self.findings["family"] == family]
        out = df[["finding_id", "family"]].copy()
        out["decision"] = [self._label(self.decided.get(f)) for f in df["finding_id"]]
        out["gap"] = df["gap"].round(2)
        out["text"] = df["text"].str.strip()  # last: the widest, it wraps
        return out

    @staticmethod
    def _label(d) -> str:
        if d is None:
            return ""
        return d.decision + (f" ({d.label})" if d.label else "")

    def next_undecided(self, family: str = ALL, after: str | None = None) -> str | None:
        ids = self.table(family)["finding_id"].tolist()
        start = ids.index(after) + 1 if after in ids else 0
        for f in ids[start:] + ids[:start]:
            if f not in self.decided:
                return f
        return None

    def show(self, finding_id: str | None) -> dict:
        """What the page shows of one finding."""
        if finding_id is None:
            return {"id": None, "title": "Every finding is decided.", "spans": [], "details": ""}
        if finding_id not in set(self.findings["finding_id"]):
            raise DataError(f"no finding {finding_id!r} in this audit")
        row = self.findings.set_index("finding_id").loc[finding_id]
        spans = diff_spans(row["source"], row["text"]) if row["source"] else [(row["text"], None)]
        details = (
            f"**{row['family']}** ({row['kind']}): {row['edit']}  \n"
            f"reward {row['reward']:+.3f} ({'toxic' if row['reward_toxic'] else 'clean'} at its "
            f"threshold), judge {'toxic' if row['judge_toxic'] else 'clean'} "
            f"({row['judge_score']:.2f}), gap {row['gap']:+.2f} sd"
            + (f"  \nsource: `{row['source'].strip()}`" if row["source"] else "")
            + f"  \ndecision: {self._label(self.decided.get(finding_id)) or 'none yet'}"
        )
        return {"id": finding_id, "title": finding_id, "spans": spans, "details": details}

    def decide(self, finding_id: str | None, action: str, family: str = ALL) -> str | None:
        """Record `action` (accept, reject, relabel-toxic, relabel-clean) on the finding, append
        it to the log, and return the next undecided finding (of `family`: the page's filter)."""
        if finding_id is None:
            raise FairlError("no finding is shown", hint="every finding is decided")
        decision, _, label = action.partition("-")
        d = make_decision(
            self.findings, self.sha, finding_id, decision, label or None, self.who, via="web"
        )
        append(self.log_path, [d])
        self.decided[finding_id] = d
        return self.next_undecided(family, after=finding_id)


def build(page: TriagePage):
    """The page as a gr.Blocks: a family filter and the findings table on the left; the shown
    finding (its edit highlighted), its scores, and the decision buttons on the right."""
    import gradio as gr  # the optional extra: imported when the page is built

    with gr.Blocks(title="fairl triage") as demo:
        current = gr.State(page.next_undecided())
        gr.Markdown(
            f"# fairl triage\n{len(page.findings)} findings of the audit "
            f"(findings sha256 {page.sha[:12]}); decisions go to `{page.log_path}`. Keys: "
            + ", ".join(f"**{k}** {v}" for k, v in SHORTCUTS.items())
        )
        with gr.Row():
            with gr.Column(scale=3):
                family = gr.Dropdown(page.families(), value=ALL, label="Family")
                table = gr.Dataframe(page.table(), interactive=False, wrap=True, max_height=520)
            with gr.Column(scale=2):
                title = gr.Markdown()
                text = gr.HighlightedText(
                    label="text (edit highlighted)",
                    color_map={"added": "green", "removed": "red"},
                    combine_adjacent=True,
                )
                details = gr.Markdown()
                with gr.Row():
                    buttons = {
                        a: gr.Button(a.replace("-", " "), elem_id=f"btn-{a}")
                        for a in ("accept", "reject", "relabel-toxic", "relabel-clean")
                    }
                nxt = gr.Button("next undecided", elem_id="btn-next")

        def render(fid, fam):
            shown = page.show(fid)
            return fid, f"### {shown['title']}", shown["spans"], shown["details"], page.table(fam)

        outputs = [current, title, text, details, table]
        demo.load(render, [current, family], outputs)
        family.change(lambda fam: render(page.next_undecided(fam), fam), family, outputs)
        nxt.click(
            lambda fid, fam: render(page.next_undecided(fam, fid), fam), [current, family], outputs
        )
        for action, btn in buttons.items():
            btn.click(
                lambda fid, fam, a=action: render(page.decide(fid, a, fam), fam),
                [current, family],
                outputs,
            )
    return demo


def serve(page: TriagePage, port: int = 7860, block: bool = True):
    """Serve the page on 127.0.0.1 (local only); returns the app when not blocking."""
    demo = build(page)
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=not block, js=_KEYS_JS,
        quiet=True,
    )  # fmt: skip
    return demo
