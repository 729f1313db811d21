"""Run a tool with every validation batch made slow on purpose, and record the exit status.

    python tests/slow_validation.py SECONDS STATUS_DIR tools/train.py ARGS...

For the tests of a stop during validation under torchrun: each validation batch takes SECONDS
more (as an ImageNet pass would), and each rank writes STATUS_DIR/rank-R with the status it exits
with (torchrun itself exits 1 after a signal, whatever its ranks did).
"""
import os
import runpy
import sys
import time

from toolkit.engine import passes  # the trainer makes its validation loader there (make_loaders)


class SlowLoader:
    def __init__(self, loader, seconds):
        self.loader, self.seconds = loader, seconds

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            time.sleep(self.seconds)
            yield batch


def main():
    seconds, status_dir, tool = float(sys.argv[1]), sys.argv[2], sys.argv[3]
    make_eval_loader = passes.make_eval_loader
    passes.make_eval_loader = lambda *a, **k: SlowLoader(make_eval_loader(*a, **k), seconds)
    sys.argv = [tool] + sys.argv[4:]
    status = 0
    try:
        runpy.run_path(tool, run_name="__main__")
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        raise
    finally:
        os.makedirs(status_dir, exist_ok=True)
        with open(os.path.join(status_dir, f"rank-{os.environ.get('RANK', '0')}"), "w") as f:
            f.write(str(status))


if __name__ == "__main__":
    main()
