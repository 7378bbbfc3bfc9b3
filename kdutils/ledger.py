"""Every study's claims in one table: the overview's ledger and the README's findings, from the results.

Each study notebook writes its claims (rows of `session.claim`) into its
results JSON. `collect` reads them back, one row per claim, and marks a
study's results **stale** when they were measured at another profile or by
code that has changed since (`results.staleness`: the notebook or a kdutils
module it uses); stale rows stay visible but are not counted.
`markdown` renders the rows the README shows, so the README's findings are
regenerated, never typed (`python -m kdutils findings --write-readme`).
"""

from __future__ import annotations

from pathlib import Path

from .paths import REPO_ROOT, read_json
from .results import staleness
from .stats import NOT_MEASURED, VERDICTS, PairedVerdict

__all__ = ["collect", "counts", "markdown", "write_readme"]

README_START, README_END = "<!-- findings:start -->", "<!-- findings:end -->"


def _verdict(row: dict) -> PairedVerdict | None:
    """The claim's `stats.PairedVerdict` as its results JSON holds it (None for a claim without gains)."""
    ours = row.get("ours")
    if not ours:
        return None
    low, high = (float(bound) for bound in row.get("interval") or ("-inf", "inf"))  # JSON: "-inf" / "inf"
    return PairedVerdict(row.get("verdict_if_measured", row["verdict"]), ours["mean"], ours["std"], ours["n"],
                         low, high, row.get("confidence", 0.95))


def _inside(row: dict) -> str:
    inside = row.get("paper_inside")
    return "" if inside is None else "yes" if inside else "no"


def collect(root: str | Path, studies: list[str], profile: str) -> list[dict]:
    """One row per claim of every study under `root/<study>/results.json` (a missing study: one row saying so)."""
    rows = []
    for study in studies:
        path = Path(root) / study / "results.json"
        results = read_json(path)
        if results is None:
            rows.append({"study": study, "kind": "claim", "claim": "(not run at this profile)", "paper": "",
                         "measured": "", "verdict": NOT_MEASURED, "note": str(path), "stale": ""})
            continue
        stale = staleness(results, study, profile)
        for row in results.get("claims", []):
            verdict = _verdict(row)
            rows.append({"study": study, **row, "kind": row.get("kind", "claim"),
                         "ours": verdict.gains_text() if verdict else "",
                         "interval": verdict.interval_text() if verdict else "", "inside": _inside(row),
                         "stale": stale})
    return rows


def counts(rows: list[dict], kind: str = "claim") -> dict[str, int]:
    """Claims of `kind` per verdict, stale results left out."""
    live = [r for r in rows if r["kind"] == kind and not r["stale"]]
    return {v: sum(r["verdict"] == v for r in live) for v in VERDICTS}


def markdown(rows: list[dict]) -> str:
    """The findings table the README shows: the papers' claims, then the lab's preconditions.

    "measured" is the value itself (in the paper's terms); the gain columns are the per-seed paired
    differences the verdict is computed from, with the note saying how they are formed, so a paper's
    number is never read against a number in other units.
    """
    def table(kind):
        lines = ["| study | claim | paper | measured | gain per seed: mean +- std (n), how formed | 95% interval "
                 "| paper's size in interval | verdict |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["kind"] == kind:
                verdict = f"{r['verdict']} (stale: {r['stale']})" if r["stale"] else r["verdict"]
                gain = "; ".join(part for part in (r["ours"], r.get("note", "")) if part)
                cells = (r["study"], r["claim"], r["paper"], r.get("value", r["measured"]), gain, r["interval"],
                         r.get("inside", ""), verdict)
                lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells)
                             + " |")
        return "\n".join(lines)

    summary = ", ".join(f"{n} {v}" for v, n in counts(rows).items() if n)
    return (f"**The papers' claims** ({summary}):\n\n{table('claim')}\n\n"
            f"**Preconditions** (lab checks, not the papers' claims):\n\n{table('precondition')}\n")


def write_readme(rows: list[dict], readme: str | Path = REPO_ROOT / "README.md") -> bool:
    """Replace the README's findings block with `markdown(rows)`; True when it changed."""
    readme = Path(readme)
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} block for the findings.")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_START}\n{markdown(rows)}{README_END}{tail}"
    readme.write_text(new)
    return new != text
