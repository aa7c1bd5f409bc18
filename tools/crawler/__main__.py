"""``python -m tools.crawler`` (from the repository root): see tools/crawler/crawl.py."""

import sys

if __name__ == "__main__":  # the guard matters: crawl processes are spawned and re-import this file
    from tools.crawler.crawl import run

    sys.exit(run())
