"""The printed table: one Markdown row per measured row, with a note per task."""
HEAD = ("task", "size", "ch", "variant", "ms median", "min-max", "img/s", "GFLOP/s", "peak MB",
        "note")


def format_table(rows):
    """A Markdown table of the rows, columns padded to their widest cell; a row whose status is
    not ``ok`` shows ``-`` and its status."""
    lines = [HEAD]
    for r in rows:
        if r.get("status") != "ok":
            lines.append((r["task"], str(r["size"]), str(r["channels"]), r.get("variant", ""),
                          "-", "-", "-", "-", "-", r.get("status", "")))
            continue
        lines.append((r["task"], str(r["size"]), str(r["channels"]), r["variant"],
                      f"{r['ms_median']:.0f}", f"{r['ms_min']:.0f}-{r['ms_max']:.0f}",
                      f"{r['images_per_s']:.2f}", str(r.get("gflops_achieved", "-")),
                      f"{r['peak_rss_mb']:.0f}", _note(r)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEAD))]
    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    return "\n".join([out[0], rule] + out[1:])


def _note(r):
    """The note of an ``ok`` row: what its task measured beyond the time, and the Winograd
    kernel where it ran."""
    note = ""
    if r["task"] == "stream":
        note = (f"{r['image']}x{r['image']} Zarr in chunks of {r['chunk']} to "
                f"{'tiled TIFF' if r.get('output') == 'tif' else 'Zarr'}, tile {r['tile']}: "
                f"{r['seconds']:.0f} s, {r['megapixels_per_s']:.2f} Mpx/s")
    elif r["task"] == "tiled":
        note = f"per pixel {r['per_pixel_vs_single']:.2f}x one {r['tile']} pass"
    elif r["task"] == "epoch":
        note = (f"epoch vs {r['steps']} pure steps of {r['reference_step_ms']:.0f} ms: "
                f"{100 * r['overhead']:+.1f}%; per epoch "
                + ", ".join(f"{k} {v / 1e3:.2f} s" for k, v in r["parts_ms"].items())
                + "; median step by epoch "
                + " / ".join("-" if ms is None else f"{ms:.0f}" for ms in r["step_ms_by_epoch"])
                + " ms")
    elif r["task"] == "data":
        note = f"{r['workers']} workers"
    elif r.get("max_prob_diff_vs_fp32"):
        note = (f"prob diff to fp32 max {r['max_prob_diff_vs_fp32']:.2g} mean "
                f"{r['mean_prob_diff_vs_fp32']:.2g}, same class "
                f"{100 * r['argmax_agreement_vs_fp32']:.2f}%")
    if str(r.get("conv_kernel", "")).startswith("winograd"):
        note = "3x3 convs: Winograd kernel" + (f"; {note}" if note else "")
    return note
