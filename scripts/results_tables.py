"""Generate the README's results section from the recipe JSON files of `larq-l1inf reproduce`.

    python scripts/results_tables.py                       # docs/results/*.json -> stdout
    python scripts/results_tables.py --results docs/results --out docs/results/README.md \
        --plot docs/results/table2_noise.png --readme README.md

Every number comes from the JSON files (no figure typed by hand). Per table: mean +- std over
seeds of clean and noisy accuracy, the paired difference with its 95% t-interval at the
paper's noise ranges and at the range where the reference loses 10-30 points, and one
sentence on whether the paper's direction reproduced (only where the interval excludes zero).
The plot: accuracy vs noise level for the headline comparison (table 2), one line per arm.
"""

import argparse
import glob
import json
import os
import sys


def pct(x):
    return f"{100 * x:.2f}"


def interval(d):
    return f"{100 * d['mean']:+.2f} [{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}]"


def eps_label(eps):
    lo, hi = eps
    if hi < 0.02:  # the paper's CIFAR range reads better in 1/255 units
        return f"[{lo * 255:.0f}/255, {hi * 255:.0f}/255]"
    return f"[{lo:g}, {hi:g}]"


def shown_ranges(result):
    """Indices of the noise ranges in the table: the paper's ranges and every comparison's hard
    range (where its reference loses 10-30 points)."""
    shown = list(result["paper_ranges"])
    for c in result["comparisons"]:
        if c["hard_range"] is not None and c["hard_range"] not in shown:
            shown.append(c["hard_range"])
    return sorted(shown)


def verdict_sentence(result):
    """One sentence: did the paper's direction reproduce (interval excludes zero, right sign)?

    Under noise, every shown range counts (the paper's and the hard one); a resolved
    difference names the ranges where it was resolved. Extra measures (PGD, verified accuracy)
    get a sentence of their own."""
    comparisons = result["comparisons"]
    ranges = shown_ranges(result)
    higher, lower, open_ = [], [], []
    for c in comparisons:
        verdicts = {c["noisy"][i]["verdict"] for i in ranges}
        label = f"{c['treatment']} vs {c['reference']}"
        resolved = [eps_label(result["epsilons"][i]) for i in ranges
                    if c["noisy"][i]["verdict"] in ("higher", "lower")]
        if resolved and ("higher" in verdicts) != ("lower" in verdicts):
            label += " (at " + ", ".join(resolved) + ")"
        # A resolved difference under noise that clean accuracy shows too (same sign) is a
        # clean-accuracy gap, not robustness: say so.
        if "higher" in verdicts and c["clean"]["verdict"] == "higher":
            label += " (as much higher clean: a clean-accuracy gap)"
        if "lower" in verdicts and c["clean"]["verdict"] == "lower":
            label += " (lower clean too)"
        if "higher" in verdicts and "lower" not in verdicts:
            higher.append(label)
        elif "lower" in verdicts and "higher" not in verdicts:
            lower.append(label)
        else:
            open_.append(label)
    seeds = result["seeds"]
    parts = []
    if higher:
        parts.append("higher under noise (interval excludes zero) for " + ", ".join(higher))
    if lower:
        parts.append("lower under noise for " + ", ".join(lower))
    if open_:
        parts.append("not resolved (interval contains zero, or mixed signs) for "
                     + ", ".join(open_))
    head = f"Paper: {result['claim']}. Here ({seeds} paired seeds): " + "; ".join(parts) + "."
    head += extra_verdicts(result)
    if result.get("direction") == "higher":
        if comparisons and len(higher) == len(comparisons):
            tail = " The paper's direction reproduced for every comparison."
        elif higher:
            tail = " The paper's direction reproduced only where listed as higher."
        else:
            tail = " The paper's direction did not reproduce at this scale."
    else:
        tail = " No direction under noise is claimed; the numbers stand on their own."
    return head + tail


def extra_verdicts(result):
    """The resolved paired differences of the extra measures (PGD, verified accuracy), as a
    sentence; empty for a recipe without them."""
    higher, lower, any_measure = [], [], False
    for c in result["comparisons"]:
        compared = measured(c)
        any_measure = any_measure or bool(compared)
        for want, out in (("higher", higher), ("lower", lower)):
            names = [name for name, d in compared if d["verdict"] == want]
            if names:
                out.append(f"{c['treatment']} vs {c['reference']} ({', '.join(names)})")
    if not any_measure:
        return ""
    if not higher and not lower:
        return " Under PGD and verification: no paired difference resolved."
    parts = ([f"higher for {'; '.join(higher)}"] if higher else []) + (
        [f"lower for {'; '.join(lower)}"] if lower else [])
    return (" Under PGD and verification (interval excludes zero): " + "; ".join(parts)
            + "; every other difference unresolved.")


def table(result):
    ranges = shown_ranges(result)
    eps = result["epsilons"]
    lines = [f"### {result['title']}", ""]
    scale = result["scale"]
    first = next(iter(result["arms"].values()))["config"]
    lines.append(
        f"{first['dataset']}, {first['backbone']} (width {scale.get('width')}), "
        f"{scale.get('train_size')} training / {scale.get('test_size')} test examples, "
        f"{scale.get('epochs')} epochs, {result['seeds']} paired seeds, "
        f"{scale.get('draws')} noise draws per range"
        + (" (--quick)" if result.get("quick") else "")
        + (f"; {result['run_seconds'] / 60:.0f} min of training and evaluation on "
           f"{result['versions'].get('cpus', '?')} CPU cores" if "run_seconds" in result else "")
        + ". Accuracy in %, mean +- std over seeds.")
    lines.append("")
    arms = result["arms"]
    some = next(iter(arms.values()))
    measures = extra_headers(some, next(iter(some["runs"]), {}))
    header = ["arm", "clean"] + [f"noise {eps_label(eps[i])}" for i in ranges] + measures
    if "bops" in some:
        header += ["BOPs (M)", "binary MACs (M)"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for arm, a in arms.items():
        cells = [arm, f"{pct(a['clean']['mean'])} +- {pct(a['clean']['std'])}"]
        cells += [f"{pct(a['noisy'][i]['mean'])} +- {pct(a['noisy'][i]['std'])}" for i in ranges]
        cells += [f"{pct(v['mean'])} +- {pct(v['std'])}" for _, v in measured(a)]
        if "bops" in a:
            cells += [f"{a['bops']['total_bops'] / 1e6:.2f}", f"{a['bops']['binary_macs'] / 1e6:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Paired difference (points, 95% t-interval over seeds):", ""]
    header = (["treatment - reference", "clean"]
              + [f"noise {eps_label(eps[i])}" for i in ranges] + measures)
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for c in result["comparisons"]:
        cells = [f"{c['treatment']} - {c['reference']}", interval(c["clean"])]
        cells += [interval(c["noisy"][i]) + (" (hard)" if i == c["hard_range"] else "")
                  for i in ranges]
        cells += [interval(v) for _, v in measured(c)]
        if not c["paired"]:
            cells[0] += " (NOT paired)"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", verdict_sentence(result), ""]
    return "\n".join(lines)


def measured(summary):
    """`(name, entry)` of the compared extra measures of an arm summary or a comparison, in
    column order: PGD, then IBP- and CROWN-IBP-verified accuracy per epsilon."""
    out = [("PGD", summary["pgd"])] if "pgd" in summary else []
    return out + [(f"{name} eps {v['epsilon']:g}", v)
                  for key, name in (("verified", "IBP-verified"),
                                    ("verified_crown", "CROWN-IBP-verified"))
                  for v in summary.get(key, [])]


def extra_headers(arm, run):
    """Column names of `measured(arm)`; PGD's names its iterations and epsilon (from a run)."""
    return [f"PGD-{run['pgd']['iterations']} eps {run['pgd']['epsilon']:g}" if name == "PGD"
            else name for name, _ in measured(arm)]


def plot(result, path):
    """Accuracy (mean over seeds, error bar the std) vs the upper end of the noise range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [0.0] + [e[1] for e in result["epsilons"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    # One colour per variant: dashed without a treatment, solid with it.
    variants = list(dict.fromkeys(arm.split("+")[0] for arm in result["arms"]))
    colours = {v: f"C{i}" for i, v in enumerate(variants)}
    for arm, a in result["arms"].items():
        ys = [a["clean"]["mean"]] + [v["mean"] for v in a["noisy"]]
        es = [a["clean"]["std"]] + [v["std"] for v in a["noisy"]]
        ax.errorbar(xs, [100 * y for y in ys], yerr=[100 * e for e in es], capsize=2,
                    label=arm, linestyle="-" if "+" in arm else "--", marker="o", markersize=3,
                    color=colours[arm.split("+")[0]])
    ax.set_xlabel("noise range upper end (Algorithm 1, [0, 1] pixel units)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(result["title"], fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


README_BEGIN = "<!-- results summary: generated by scripts/results_tables.py --readme -->"
README_END = "<!-- end of results summary -->"


def summary(result):
    """One README bullet per recipe: its verdict and every paired difference at the paper's
    strongest noise range."""
    i = max(result["paper_ranges"])
    eps = eps_label(result["epsilons"][i])
    minutes = f", {result['run_seconds'] / 60:.0f} min of compute" if "run_seconds" in result else ""
    def at(c):
        text = f"{c['treatment']} - {c['reference']} {interval(c['noisy'][i])}"
        h = c["hard_range"]
        if h is not None and h != i:  # where the reference loses 10-30 points
            text += f" (at {eps_label(result['epsilons'][h])}: {interval(c['noisy'][h])})"
        return text

    diffs = "; ".join(at(c) for c in result["comparisons"])
    return (f"- **{result['title']}** ({result['seeds']} paired seeds{minutes}). Paired "
            f"difference under noise {eps}, points [95% interval]: {diffs}. "
            + verdict_sentence(result))


def replace_readme_block(path, text, begin=README_BEGIN, end=README_END):
    """Replace the generated block between the marker lines `begin` and `end` in `path` (the
    results summary by default; benchmarks/gm_step_cost.py renders its tables with it too)."""
    with open(path) as f:
        readme = f.read()
    if begin not in readme or end not in readme:
        raise SystemExit(f"{path} has no generated block ({begin} ... {end})")
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(head + begin + "\n" + text + end + tail)


ORDER = ["table2", "table3", "table7", "table10", "table11", "tables15_16", "reductions",
         "noise_augment", "certified", "mbn"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=os.path.join("docs", "results"),
                        help="directory of the recipe JSON files")
    parser.add_argument("--out", help="write the markdown here (default: stdout)")
    parser.add_argument("--plot", help="PNG of accuracy vs noise for the headline (table2)")
    parser.add_argument("--quick", action="store_true", help="use the NAME_quick.json files")
    parser.add_argument("--readme", help="also rewrite the generated summary block of this "
                                         "README (one bullet per recipe)")
    args = parser.parse_args(argv)
    suffix = "_quick.json" if args.quick else ".json"
    found = {}
    for path in sorted(glob.glob(os.path.join(args.results, "*" + suffix))):
        name = os.path.basename(path)[: -len(suffix)]
        if not args.quick and name.endswith("_quick"):
            continue
        with open(path) as f:
            found[name] = json.load(f)
    if not found:
        parser.error(f"no *{suffix} in {args.results}; run `larq-l1inf reproduce NAME` first")
    names = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    text = "## Results: does the penalty help?\n\n" + (
        "Generated by scripts/results_tables.py from " + args.results + "/*" + suffix
        + "; a direction counts as reproduced only where the 95% interval of the paired "
        "difference excludes zero.\n\n")
    text += "\n".join(table(found[n]) for n in names)
    if args.plot and "table2" in found:
        plot(found["table2"], args.plot)
        text += f"\n![accuracy vs noise, table 2]({os.path.relpath(args.plot, os.path.dirname(args.out or '.') or '.')})\n"
    if args.readme:
        replace_readme_block(args.readme, "\n".join(summary(found[n]) for n in names) + "\n")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
