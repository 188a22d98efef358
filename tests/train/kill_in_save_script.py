"""Runs launch/train.py with the given flags and SIGKILLs itself while writing the checkpoint of one step.

  python tests/train/kill_in_save_script.py STEP [train.py flags...]

The kill lands inside orbax's save of step STEP, after the data-iterator item is written into the uncommitted
(temporary) checkpoint folder and before orbax commits it: a preemption in the middle of a checkpoint write.
"""

import os
import runpy
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  kill_step = sys.argv[1]
  from grain._src.python.checkpoint import handler  # the handler orbax calls for the `data_iter` item

  original_save = handler.CheckpointHandler.save

  def save_then_die(self, directory, item=None, args=None):
    original_save(self, directory, item, args)
    # directory is <checkpoints>/<step>.orbax-checkpoint-tmp-*/data_iter (or <step>/data_iter if written in place).
    step_folder = os.path.basename(os.path.dirname(os.fspath(directory)))
    if step_folder.split(".")[0] == kill_step:
      sys.stdout.flush()
      os.kill(os.getpid(), signal.SIGKILL)

  handler.CheckpointHandler.save = save_then_die
  sys.argv = [os.path.join(ROOT, "launch", "train.py")] + sys.argv[2:]
  sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as when train.py is run as a script
  runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
  main()
