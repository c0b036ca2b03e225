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


def test_registration_is_in_process_and_there_is_no_startup_hook():
    """A fresh interpreter has imported nothing of seam_jax and lm-eval does not know the
    model; importing the adapter registers it (``simple_evaluate(model="seam_jax")``)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'seam_jax'], 'seam_jax imported at start'\n"
        "from lm_eval.api.registry import get_model\n"
        "try:\n"
        "    get_model('seam_jax')\n"
        "    raise SystemExit('lm-eval knows seam_jax before the adapter is imported')\n"
        "except ValueError:\n"
        "    pass\n"
        "import seam_jax.eval.lm_eval_adapter\n"
        "assert get_model('seam_jax').__name__ == 'SeamJaxLM'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]


def test_install_writes_no_pth_hook():
    """No executable ``.pth`` line of seam_jax's own in site-packages (only setuptools'
    editable-install finder, which a normal install does not have)."""
    import site

    dirs = [pathlib.Path(d) for d in site.getsitepackages() + [site.getusersitepackages()]]
    ours = [p for d in dirs if d.is_dir() for p in d.glob("*.pth")
            if "lm_eval" in p.read_text(errors="replace") or p.name.startswith("seam_jax")]
    assert not ours, f"start-up hooks left by an older install: {ours}; reinstall seam_jax"
