"""Everything is in pyproject.toml; this file only adds ``seam_jax_lm_eval.pth``.

The .pth file's one line runs ``seam_jax.lm_eval_plugin.install()`` at interpreter
start, so that the stock ``lm_eval --model seam_jax`` finds the model (lm-eval has no
plugin discovery; see that module). It is written into the wheel's root (a normal
install) or into the editable wheel (``pip install -e``), so pip records it and
``pip uninstall`` removes it.
"""

import pathlib

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "seam_jax_lm_eval.pth"
LINE = ("import importlib.util as _u; _u.find_spec('seam_jax') and "
        "__import__('seam_jax.lm_eval_plugin').lm_eval_plugin.install()\n")


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        pathlib.Path(self._pth_dir()).mkdir(parents=True, exist_ok=True)
        pathlib.Path(self._pth_dir(), PTH).write_text(LINE)

    def _pth_dir(self) -> str:
        if getattr(self, "editable_mode", False):
            # setuptools' editable_wheel points install_lib at the unpacked wheel.
            return self.get_finalized_command("install").install_lib
        return self.build_lib

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs.append(str(pathlib.Path(self.build_lib, PTH)))
        return outputs


setup(cmdclass={"build_py": BuildPyWithPth})
