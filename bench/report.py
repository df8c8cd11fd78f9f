"""Markdown tables and PNG plots from one benchmark run (the dict bench.run writes as JSON)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from bench.common import machine_line  # noqa: E402

MIB = 2**20
BOUNDARY_AXIS_MS = 600
PART_TITLES = {"varied": "varied", "clips": "short clips", "long": "long file", "no_speech": "no speech",
               "real": "real speech", "real_noisy": "real speech + noise"}


def write_report(run: dict, out_dir: Path) -> None:
    mode = run["mode"]
    (out_dir / f"{mode}.md").write_text(markdown(run, f"{mode}-throughput_vs_memory.png", f"{mode}-boundary_errors.png"))
    plot_throughput_vs_memory(run, out_dir / f"{mode}-throughput_vs_memory.png")
    plot_boundary_errors(run, out_dir / f"{mode}-boundary_errors.png")


def _ok(run: dict) -> list[dict]:
    return [r for r in run["results"] if r["status"] == "ok"]


def _name(result: dict, run: dict) -> str:
    models = {r["model"] for r in _ok(run)}
    return result["label"] if len(models) == 1 else f"{result['label']} ({result['model']})"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def mib(value: float | None) -> str:
    return "–" if value is None else f"{value / MIB:.0f}"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def _settings(result: dict) -> str:
    s = result["settings"]
    precision = s.get("compute_type") or (
        s["quantization"] if s.get("quantization", "none") != "none" else s.get("dtype", "")
    )
    batch = f"batch {s['batch_size']}" if "batch_size" in s else ""
    return ", ".join(filter(None, [s.get("profile"), precision, batch, s.get("segmentation")]))


def estimated_peak_bytes(result: dict) -> int | None:
    """The peak memory selection estimated for a steadyscribe plan; None for other systems.

    Results from before bench.worker recorded it carry it in their settings.
    """
    return result.get("estimated_peak_bytes") or result.get("settings", {}).get("predicted_peak_bytes")


def _machine(run: dict) -> str:
    return machine_line(run["machine"], run["date"], f"{run['mode']} mode")


def markdown(run: dict, throughput_png: str, boundary_png: str) -> str:
    ok = _ok(run)
    lines = [f"**Machine:** {_machine(run)}", "", _dataset_line(run), ""]
    lines += [
        "| system | settings | WER | words within 200 ms | mean boundary error (ms) | words on no-speech "
        "| throughput (audio s / s) | RTF | load (s) | peak RSS (MiB) | estimated peak (MiB) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in ok:
        o, final = r["overall"], r["overall"]["final"]
        lines.append(
            f"| {_name(r, run)} | {_settings(r)} | {pct(final['wer'])} | {pct(final['within_200ms'])} "
            f"| {_ms(final['mean_abs_error_ms'])} | {final['no_speech_words']} | {o['throughput']:.1f} "
            f"| {o['rtf']:.3f} | {r['load_s']:.1f} | {mib(r['peak_rss_bytes'])} | {mib(estimated_peak_bytes(r))} |"
        )
    parts = [p for p in run["dataset"] if p != "no_speech"]
    for title, cell in (
        ("WER by part", lambda f: pct(f["final"]["wer"])),
        ("Words within 200 ms by part", lambda f: pct(f["final"]["within_200ms"])),
        ("Throughput (audio s / wall s) by part", lambda f: f"{f['throughput']:.1f}"),
    ):
        lines += ["", f"**{title}**", "", "| system | " + " | ".join(PART_TITLES.get(p, p) for p in parts) + " |",
                  "|---|" + "--:|" * len(parts)]
        lines += [f"| {_name(r, run)} | " + " | ".join(cell(r["parts"][p]) for p in parts) + " |" for r in ok]
    staged = [r for r in ok if "raw" in r["overall"]]
    if staged:
        lines += [
            "", "**Stabilization stage: the engine's word times (raw) and after the stage**", "",
            "| engine | within 200 ms raw | within 200 ms stabilized | mean error raw (ms) "
            "| mean error stabilized (ms) | WER raw | WER stabilized | no-speech words raw | stabilized |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for r in staged:
            raw, final = r["overall"]["raw"], r["overall"]["final"]
            lines.append(
                f"| {_name(r, run)} | {pct(raw['within_200ms'])} | {pct(final['within_200ms'])} "
                f"| {_ms(raw['mean_abs_error_ms'])} | {_ms(final['mean_abs_error_ms'])} | {pct(raw['wer'])} "
                f"| {pct(final['wer'])} | {raw['no_speech_words']} | {final['no_speech_words']} |"
            )
    if run.get("vad_cpu_s_per_audio_hour") is not None:
        per_hour = run["vad_cpu_s_per_audio_hour"]
        lines += ["", f"Speech detection (Silero VAD, one thread): {per_hour:.1f} CPU s per audio hour "
                      f"({100 * per_hour / 3600:.2f}% of the audio's duration)."]
    not_run = [r for r in run["results"] if r["status"] != "ok"]
    if not_run or run["notes"]:
        lines += ["", "**Not measured**", ""]
        lines += [f"- {r['label']} ({r['model']}): {r['status']}: {r['note']}" for r in not_run]
        lines += [f"- {note}" for note in run["notes"]]
    lines += [
        "",
        f"![throughput against peak memory]({throughput_png})",
        f"![word boundary error distribution]({boundary_png})",
        "",
    ]
    return "\n".join(lines)


def _dataset_line(run: dict) -> str:
    parts = ", ".join(
        f"{PART_TITLES.get(part, part)}: {d['files']} files, {d['audio_s']:.0f} s, {d['words']} words"
        for part, d in run["dataset"].items()
    )
    return f"**Set:** {parts}."


def _colors(run: dict) -> dict[str, str]:
    """One colour per system, the same in every plot and for every model."""
    return {name: f"C{i}" for i, name in enumerate(dict.fromkeys(r["system"] for r in _ok(run)))}


def plot_throughput_vs_memory(run: dict, path: Path) -> None:
    colors = _colors(run)
    models = list(dict.fromkeys(r["model"] for r in _ok(run)))
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=100)
    for r in _ok(run):
        color = colors[r["system"]]
        # Filled: the first model, hollow: the next. Circles: steadyscribe (it has a stabilization stage).
        ax.scatter(r["peak_rss_bytes"] / MIB, r["overall"]["throughput"], s=60,
                   marker="o" if "raw" in r["overall"] else "s",
                   color=color if r["model"] == models[0] else "none", edgecolors=color,
                   label=_name(r, run), zorder=3)
    ax.set_xlabel("peak RSS of the process (MiB)")
    ax.set_ylabel("throughput (audio s per wall s)")
    ax.set_title("Throughput against peak memory (up and to the left is better)", fontsize=10)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    _footer(fig, run)
    fig.savefig(path)
    plt.close(fig)


def plot_boundary_errors(run: dict, path: Path) -> None:
    """Per model, the share of truth words whose worse boundary error is within x.

    Unmatched words never are, so each curve's height at 200 ms is the within-200 ms rate.
    """
    colors = _colors(run)
    models = list(dict.fromkeys(r["model"] for r in _ok(run)))
    fig, axes = plt.subplots(1, len(models), figsize=(5 + 3 * len(models), 4.2), dpi=100, sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models):
        for r in (r for r in _ok(run) if r["model"] == model):
            for variant, style, suffix in (("final", "-", ""), ("raw", ":", ", before stabilization")):
                if variant not in r["overall"]:
                    continue
                percentiles = r["overall"][variant]["word_error_percentiles_ms"]
                points = [(ms, p / 100) for p, ms in enumerate(percentiles) if ms is not None]
                # Carry the last share to the right edge: the words past it are off the axis or unmatched.
                points.append((BOUNDARY_AXIS_MS, points[-1][1]))
                ax.step([ms for ms, _ in points], [share for _, share in points], style, where="post",
                        color=colors[r["system"]], label=r["label"] + suffix, linewidth=1.5)
        ax.axvline(200, color="0.5", linewidth=0.8)
        ax.set_xlim(0, BOUNDARY_AXIS_MS)
        ax.set_ylim(0, 1)
        ax.set_xlabel("worse of start and end error (ms)")
        ax.set_title(model, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of truth words")
    fig.suptitle("Word boundary errors over all speech (higher is better; line at 200 ms)", fontsize=10)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    _footer(fig, run)
    fig.savefig(path)
    plt.close(fig)


def _footer(fig: plt.Figure, run: dict) -> None:
    """The machine and commit under the plot, so a copied image still says where it was measured."""
    fig.text(0.01, 0.01, _machine(run).replace("`", ""), fontsize=6, color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
