"""The torch range: an older torch than the minimum is a one-line ImportError naming it; setup.py's
install_requires states the same minimum."""
import os
import re

import pytest

from ge_detectron.version import MIN_TORCH, check_torch_version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_torch_older_than_the_minimum_is_one_line_naming_it():
    with pytest.raises(ImportError) as info:
        check_torch_version("2.6.0+cu124")
    assert str(info.value) == ("ge_detectron needs torch >= 2.7 (with its torchvision), found torch 2.6.0+cu124: "
                               "install e.g. `pip install 'torch>=2.7' torchvision` (README, Versions).")


@pytest.mark.parametrize("version", ["2.5.1", "2.6.0+cpu"])
def test_older_releases_are_refused(version):
    with pytest.raises(ImportError, match=f"needs torch >= 2.7 .* found torch {re.escape(version)}:"):
        check_torch_version(version)


@pytest.mark.parametrize("version", ["2.7.0", "2.7.1+cu126", "2.10.1", "2.14.1+cu130"])
def test_the_minimum_and_newer_pass(version):
    check_torch_version(version)


def test_setup_py_requires_the_same_minimum():
    setup = open(os.path.join(REPO, "setup.py")).read()
    assert re.search(r'^MIN_TORCH = "(\d+)\.(\d+)"', setup, re.M).groups() == tuple(map(str, MIN_TORCH))
    assert 'f"torch>={MIN_TORCH}"' in setup
