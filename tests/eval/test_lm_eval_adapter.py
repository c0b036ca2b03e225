"""The lm-eval adapter against lm-eval's own HFLM on the same tiny random weights (no hub).

Tolerance 1e-4 absolute on log-likelihoods: both sides compute in float32, but XLA and
PyTorch sum in different orders; over a 384-way softmax and a few tokens that is of
order 1e-6, so 1e-4 leaves room for the summation order while a wrong shift, a
missing bos or a mis-split continuation moves a log-likelihood by > 0.1.
"""

import json
import pathlib

import pytest

lm_eval = pytest.importorskip("lm_eval")

import hf_models  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from seam_jax.eval.lm_eval_adapter import SeamJaxLM  # noqa: E402
from seam_jax.data.tokenizer import tiny_tokenizer  # noqa: E402

TOL = 1e-4

PAIRS = [
    ("Question: What is the capital of Larkmere?\nAnswer:", " Orrowgate"),
    ("Question: Add 12 and 30.\nAnswer: ", "42"),  # trailing space moves to the continuation
    ("", "Sure. Here it is."),  # empty context: conditioned on the prefix (bos) token
    ("Give the opposite of hot.", " cold"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("tiny_hf")
    hf_models.save(hf_models.build("llama_kv2", seed=3), d)
    tiny_tokenizer(384, 0).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def lms(model_dir):
    ref = HFLM(pretrained=str(model_dir), device="cpu", batch_size=4, dtype="float32")
    ours = SeamJaxLM(pretrained=str(model_dir), batch_size=4)
    return ref, ours


def _reqs(kind, args):
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_loglikelihood_matches_hflm(lms):
    ref, ours = lms
    a = ref.loglikelihood(_reqs("loglikelihood", PAIRS))
    b = ours.loglikelihood(_reqs("loglikelihood", PAIRS))
    for (la, ga), (lb, gb) in zip(a, b):
        assert abs(la - lb) < TOL, (la, lb)
        assert ga == gb
    assert len({round(x, 3) for x, _ in b}) == len(PAIRS)  # distinct: the test can tell them apart


def test_rolling_matches_hflm(lms):
    ref, ours = lms
    texts = [("Question: Who keeps the ledger of Thimblewick?",), ("Okay. " * 20,)]
    a = ref.loglikelihood_rolling(_reqs("loglikelihood_rolling", texts))
    b = ours.loglikelihood_rolling(_reqs("loglikelihood_rolling", texts))
    assert all(abs(x - y) < TOL for x, y in zip(a, b)), (a, b)


def test_truncation_matches_hflm(model_dir):
    # A context longer than max_length is cut from the left the same way.
    ref = HFLM(pretrained=str(model_dir), device="cpu", batch_size=2, dtype="float32", max_length=16)
    ours = SeamJaxLM(pretrained=str(model_dir), batch_size=2, max_length=16)
    pairs = [("one two three four five six seven eight nine ten eleven twelve", " thirteen")]
    (la, _), = ref.loglikelihood(_reqs("loglikelihood", pairs))
    (lb, _), = ours.loglikelihood(_reqs("loglikelihood", pairs))
    assert abs(la - lb) < TOL


def test_generate_until_matches_hflm(lms):
    ref, ours = lms
    reqs = [("Question: Add 2 and 3.\nAnswer:", {"until": ["\n"], "max_gen_toks": 8,
                                                  "do_sample": False})]
    assert ref.generate_until(_reqs("generate_until", reqs)) == \
        ours.generate_until(_reqs("generate_until", reqs))


def test_custom_task_accuracy_identical(lms, tmp_path):
    data = [{"question": f"Question: Pick the number {k}.\nAnswer:",
             "choices": [f" {k}", f" {k + 1}", f" {k + 7}", " none"], "label": k % 4}
            for k in range(12)]
    (tmp_path / "data.json").write_text(json.dumps(data))
    (tmp_path / "seam_tiny_mc.yaml").write_text(
        "task: seam_tiny_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'data.json'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    tm = TaskManager(include_path=str(tmp_path))
    ref, ours = lms
    r = lm_eval.simple_evaluate(model=ref, tasks=["seam_tiny_mc"], task_manager=tm)["results"]
    o = lm_eval.simple_evaluate(model=ours, tasks=["seam_tiny_mc"], task_manager=tm)["results"]
    assert r["seam_tiny_mc"]["acc,none"] == o["seam_tiny_mc"]["acc,none"]
    assert r["seam_tiny_mc"]["acc_norm,none"] == o["seam_tiny_mc"]["acc_norm,none"]


def test_registered_by_name(model_dir):
    from lm_eval.api.registry import get_model

    cls = get_model("seam_jax")
    assert cls is SeamJaxLM
    lm = cls.create_from_arg_string(f"pretrained={model_dir},batch_size=2")
    assert isinstance(lm, SeamJaxLM) and lm.batch_size == 2


def _write_task(d):
    data = [{"question": f"Question: Pick {k}.\nAnswer:", "choices": [f" {k}", " none"],
             "label": k % 2} for k in range(6)]
    (d / "data.json").write_text(json.dumps(data))
    (d / "seam_cli_mc.yaml").write_text(
        "task: seam_cli_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {d / 'data.json'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
        "metric_list:\n  - metric: acc\n")


def test_command_line(model_dir, tmp_path):
    # lm-eval's CLI through the registering wrapper (the seam-lm-eval script).
    import subprocess
    import sys

    _write_task(tmp_path)
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "seam_jax.eval.lm_eval_adapter", "--model", "seam_jax",
                    "--model_args", f"pretrained={model_dir},batch_size=4", "--tasks", "seam_cli_mc",
                    "--include_path", str(tmp_path), "--output_path", str(out)], check=True)
    results = [json.loads(p.read_text()) for p in out.rglob("results*.json")]
    assert results and "acc,none" in results[0]["results"]["seam_cli_mc"]


def test_stock_lm_eval_command_line(model_dir, tmp_path):
    """The stock ``lm_eval`` command finds ``--model seam_jax`` through the installed
    ``seam_jax_lm_eval.pth`` hook (seam_jax.lm_eval_plugin); nothing imports seam_jax first."""
    import shutil
    import subprocess

    exe = shutil.which("lm_eval") or shutil.which("lm-eval")
    assert exe, "lm-eval's console script is not on PATH; install the test extra"
    _write_task(tmp_path)
    out = tmp_path / "out"
    subprocess.run([exe, "--model", "seam_jax",  # the form: no "run" subcommand
                    "--model_args", f"pretrained={model_dir},batch_size=4", "--tasks", "seam_cli_mc",
                    "--include_path", str(tmp_path), "--output_path", str(out)], check=True)
    results = [json.loads(p.read_text()) for p in out.rglob("results*.json")]
    assert results and "acc,none" in results[0]["results"]["seam_cli_mc"]


def test_startup_hook_is_lazy():
    """The .pth hook is installed at start but imports neither jax nor the adapter, and
    registers the placeholder once lm-eval's model list loads."""
    import subprocess
    import sys

    code = ("import sys; from seam_jax.lm_eval_plugin import _Finder; "
            "assert any(isinstance(f, _Finder) for f in sys.meta_path), 'hook not installed'; "
            "assert 'jax' not in sys.modules and 'seam_jax.eval.lm_eval_adapter' not in sys.modules; "
            "from lm_eval.api.registry import get_model; cls = get_model('seam_jax'); "
            "assert cls.__name__ == 'SeamJaxLM', cls")
    subprocess.run([sys.executable, "-c", code], check=True)
