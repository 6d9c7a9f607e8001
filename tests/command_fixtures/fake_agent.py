#!/usr/bin/env python3
"""A stand-in for the claude, codex and gemini CLIs (which are not installed in CI).

It reports what it was given (``ARGV``, ``CWD``, ``ENV`` lines) and then behaves as its
prompt says: ``halves N`` prints N stream-json lines, waits for a line on stdin, prints N
more; ``hang`` starts a child, reports both pids and sleeps until killed; ``exit N``
exits with status N; ``echo`` copies stdin to stdout until EOF; ``spam`` never stops
writing; anything else prints one result line and exits 0.
"""

import json
import os
import subprocess
import sys
import time


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def prompt_of(argv):
    if argv[:1] == ["exec"]:
        return argv[1]
    if "-p" in argv:
        return argv[argv.index("-p") + 1]
    return argv[-1] if argv else ""


def main():
    argv = sys.argv[1:]
    emit({"type": "system", "argv": argv, "cwd": os.getcwd(), "env": sorted(os.environ)})
    words = prompt_of(argv).split()
    command = words[0] if words else ""
    if command == "halves":
        n = int(words[1])
        for i in range(n):
            emit({"type": "assistant", "i": i, "text": f"first half line {i} \u00e9\u4e2d"})
        sys.stdin.readline()
        for i in range(n, 2 * n):
            emit({"type": "assistant", "i": i, "text": f"second half line {i}"})
        emit({"type": "result", "subtype": "success"})
    elif command == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        emit({"type": "pids", "parent": os.getpid(), "child": child.pid})
        time.sleep(3600)
    elif command == "exit":
        emit({"type": "result", "exit": int(words[1])})
        sys.exit(int(words[1]))
    elif command == "echo":
        for line in sys.stdin:
            sys.stdout.write("echo: " + line)
            sys.stdout.flush()
    elif command == "spam":
        while True:
            sys.stdout.write("x" * 1023 + "\n")
    else:
        emit({"type": "result", "subtype": "success", "prompt": prompt_of(argv)})


if __name__ == "__main__":
    main()
