"""Build hook: a wheel carries the repository's recipes, so `lmlab VERB --config NAME` works from any install.

Everything else about the package is in pyproject.toml. configs/ stays at the top of the repository (where
`make quickstart` and the docs point); building copies its *.yaml into the package as lmlab/configs/.
An editable install needs no copy: `lmlab.config.recipe_dirs` also looks in the checkout.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

RECIPES = Path(__file__).resolve().parent / "configs"


class BuildWithRecipes(build_py):
    """build_py, then configs/*.yaml copied into the built package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        dest = Path(self.build_lib) / "lmlab" / "configs"
        self.mkpath(str(dest))
        for recipe in sorted(RECIPES.glob("*.yaml")):
            self.copy_file(str(recipe), str(dest / recipe.name))


setup(cmdclass={"build_py": BuildWithRecipes})
