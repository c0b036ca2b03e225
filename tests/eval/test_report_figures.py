"""What the report's Figure 2 draws: one line per arm, its seeds pooled at each attack lr
(last attack step, full SFT only), and the PNG it writes."""

from seam_jax.eval.report import hs_of, lr_series, model_name, plot_vs_lr, split_name, utility_of


def _row(model, lr, step, hs, mc, method="full", steps=16):
    return {"model": model, "cell": str(lr), "lr": lr, "step": step, "steps": steps,
            "method": method, "hs_judge": hs, "mc_acc": mc}


ROWS = [_row("seam-s0", 2e-4, 16, 0.1, 0.25), _row("seam-s1", 2e-4, 16, 0.3, 0.27),
        _row("seam-s0", 2e-4, 8, 0.9, 0.9),                 # not a last step
        _row("seam-s0", 5e-5, 16, 0.0, 0.5),
        _row("control-s0", 2e-4, 16, 0.6, 0.55),
        _row("control-s0", 2e-4, 16, 0.99, 0.99, method="lora")]  # not full SFT


def test_split_name():
    assert split_name("seam-s1") == ("seam", 1) == split_name(model_name("seam", 1))
    assert split_name("my-sweep-s12") == ("my-sweep", 12)
    assert split_name("model") == ("model", None) and split_name("x-sy") == ("x-sy", None)


def test_lr_series_pools_seeds_per_arm_at_the_last_full_sft_step():
    hs = lr_series(ROWS, hs_of)
    assert hs == {"seam": {2e-4: [0.1, 0.3], 5e-5: [0.0]}, "control": {2e-4: [0.6]}}
    assert lr_series(ROWS, utility_of)["seam"][2e-4] == [0.25, 0.27]


def test_plot_vs_lr_writes_a_png(tmp_path):
    before = {"seam-s0": {"hs_judge": 0.0, "mc_acc": 0.5}, "seam-s1": {"hs_judge": 0.0, "mc_acc": 0.6}}
    png = plot_vs_lr(before, ROWS, tmp_path / "lr.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_axis_labels_name_the_figures_the_rows_hold():
    from seam_jax.eval.report import axis_labels

    assert axis_labels(ROWS) == ("HS, harmful rate (judge)", "utility (MC accuracy)")
    exact = [{"hs_judge": 0.1, "benign_accuracy": 0.3}]
    assert axis_labels(exact)[1] == "utility (benign exact match)"
    assert axis_labels([*exact, *ROWS])[1] == "utility (benign exact match / MC accuracy)"
    assert axis_labels([{}]) == ("HS, harmful rate (none)", "utility (none)")


def test_the_utility_threshold_is_drawn_only_on_the_scale_the_verdict_reads():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from seam_jax.eval.report import BROKEN_UTILITY, _threshold_lines

    for rows, drawn in (([{"hs_judge": 0.1, "benign_accuracy": 0.3}], False), (ROWS, True)):
        fig, axes = plt.subplots(1, 2)
        _threshold_lines(axes, rows)
        assert len(axes[0].lines) == 1
        assert [ln.get_ydata()[0] for ln in axes[1].lines] == ([BROKEN_UTILITY] if drawn else [])
        plt.close(fig)
