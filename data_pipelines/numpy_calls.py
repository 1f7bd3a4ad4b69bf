"""Clean interpreter exit for tf.data pipelines that call NumPy.

A ``tf.numpy_function`` call still running when Python finalises blocks on the
GIL forever, and so does the main thread, which waits for it while destroying
a live iterator: the process hangs at exit (seen after Ctrl-C or an exception
that keeps a training loop's iterator alive). Pipelines wrap their NumPy work
in ``with CALLS as work:`` and skip it when ``work`` is False; at exit
``CALLS.quiesce`` makes further calls cheap and waits until tf.data has filled
its bounded buffers and stopped calling.
"""

from __future__ import annotations

import atexit
import threading
import time


class NumpyCalls:
  """Tracks the NumPy calls tf.data runs, so the interpreter exits cleanly.

  A ``tf.numpy_function`` call still running when Python finalises blocks on
  the GIL forever, and so does the main thread, which waits for it while
  destroying a live iterator: the process hangs at exit. At exit (before
  finalisation) `quiesce` makes further calls return zeros at once and
  waits until tf.data has filled its bounded buffers and stopped calling.
  """

  def __init__(self):
    self.lock = threading.Lock()
    self.active = 0
    self.last = 0.0  # time.monotonic() of the last call's start.
    self.closing = False
    self.registered = False

  def register(self) -> None:
    with self.lock:
      if not self.registered:
        atexit.register(self.quiesce)
        self.registered = True

  def __enter__(self) -> bool:
    """Returns whether the call may do its work (False once closing)."""
    with self.lock:
      self.active += 1
      self.last = time.monotonic()
      return not self.closing

  def __exit__(self, *unused_exc) -> None:
    with self.lock:
      self.active -= 1

  def quiesce(self, quiet_s: float = 0.1, timeout_s: float = 5.0) -> None:
    with self.lock:
      self.closing = True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
      with self.lock:
        if not self.active and time.monotonic() - self.last > quiet_s:
          return
      time.sleep(0.01)



CALLS = NumpyCalls()
