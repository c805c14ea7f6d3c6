"""MkDocs hook: the result plots live beside the experiments and benchmarks that make them
(`experiments/results/**.png`, `benchmarks/results/*.png`), not in `docs/`. This adds them to
the site under the same paths, so a page links `../experiments/results/<name>/<plot>.png`
(what `experiments/publish.py` writes) and `mkdocs build --strict` checks the link."""
import glob
import os

from mkdocs.structure.files import File

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLOT_FOLDERS = ("experiments/results", "benchmarks/results")


def on_files(files, config):
    for folder in PLOT_FOLDERS:
        for path in sorted(glob.glob(os.path.join(REPO, folder, "**", "*.png"), recursive=True)):
            relative = os.path.relpath(path, REPO)
            if "/runs/" in relative:
                continue  # Training run folders (not in the repository).
            files.append(File(relative, src_dir=REPO, dest_dir=config["site_dir"],
                              use_directory_urls=config["use_directory_urls"]))
    return files


#: Site pages that show a file of the repository's root, written for reading on GitHub: the page
#: in docs/ is a stub, and its text comes from the root file with its links turned into links
#: between site pages.
ROOT_PAGES = {"architecture.md": "ARCHITECTURE.md", "contributing.md": "CONTRIBUTING.md"}
ROOT_LINKS = {"](ARCHITECTURE.md": "](architecture.md", "](CONTRIBUTING.md": "](contributing.md",
              "](README.md": "](index.md", "](docs/": "]("}


def on_page_markdown(markdown, page, config, files):
    source = ROOT_PAGES.get(page.file.src_uri)
    if source is None:
        return markdown
    with open(os.path.join(REPO, source), encoding="utf-8") as handle:
        markdown = handle.read()
    for repository_link, site_link in ROOT_LINKS.items():
        markdown = markdown.replace(repository_link, site_link)
    return markdown
