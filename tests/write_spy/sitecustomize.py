"""A write spy for tests/test_distributed.py, loaded into every Python process whose PYTHONPATH holds this folder.

In a process started by a launcher (``RANK`` set) with ``ACE_WRITE_SPY=FOLDER``, an audit hook records every write
under FOLDER (a file opened for writing, a folder made, a rename, a removal) and at exit writes them to
``$ACE_WRITE_SPY_LOG/rank-R.json`` (a folder outside FOLDER). Anywhere else it does nothing.
"""

import os

if os.environ.get("ACE_WRITE_SPY") and "RANK" in os.environ:
    import atexit
    import json
    import sys

    _watched = os.path.realpath(os.environ["ACE_WRITE_SPY"])
    _writes: list = []
    _WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    _EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "os.symlink", "os.link",
               "os.truncate", "shutil.copyfile", "shutil.copytree", "os.chmod"}

    def _under(path) -> str | None:
        try:
            text = os.path.realpath(os.fsdecode(path))
        except TypeError:  # a file descriptor
            return None
        return text if text == _watched or text.startswith(_watched + os.sep) else None

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = any(c in (mode or "") for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITING)
            if writing and (where := _under(path)):
                _writes.append(["open", where])
        elif event in _EVENTS and args:
            two = event in ("os.rename", "os.symlink", "os.link", "shutil.copyfile", "shutil.copytree")  # src, dst
            for arg in args[:2] if two else args[:1]:
                if isinstance(arg, (str, bytes, os.PathLike)) and (where := _under(arg)):
                    _writes.append([event, where])

    def _report() -> None:
        path = os.path.join(os.environ["ACE_WRITE_SPY_LOG"], f"rank-{os.environ['RANK']}.json")
        with open(path, "w") as f:
            json.dump(_writes, f)

    sys.addaudithook(_hook)
    atexit.register(_report)
