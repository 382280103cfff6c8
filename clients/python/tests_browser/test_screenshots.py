"""Where screenshots go: a browser test run leaves the work tree as it was.

The README's pictures (docs/screenshots/) are tracked; a test run writes its
screenshots to a directory git ignores, and only an explicit command
(scripts/screenshots) writes docs/screenshots/.
"""

import pathlib
import subprocess

from conftest import REPO, screenshot_dir


def ignored_by_git(path):
    return subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", str(path)]).returncode == 0


def test_screenshots_go_to_a_directory_git_ignores_unless_one_is_asked_for(monkeypatch):
    monkeypatch.delenv("GRANTMESH_SCREENSHOTS", raising=False)
    default = screenshot_dir()
    assert default.is_relative_to(REPO), default
    assert ignored_by_git(default / "home.png"), f"{default} is not ignored by git"
    monkeypatch.setenv("GRANTMESH_SCREENSHOTS", str(REPO / "docs/screenshots"))
    assert screenshot_dir() == REPO / "docs/screenshots"


def test_the_readme_pictures_are_not_in_the_default_directory():
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "docs/screenshots"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert tracked, "the README's pictures are tracked"
    for name in tracked:
        assert not ignored_by_git(pathlib.Path(REPO / name)), name
