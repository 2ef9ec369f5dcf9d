"""metrics.jsonl on resume: what a killed run logged past its checkpoint is dropped, nothing
else, and a damaged log is named rather than rewritten."""

import json
import struct
import time

import pytest
from tensorboardX.proto import event_pb2

from videoar import errors
from videoar.train import metrics_log


def _write(path, lines):
  path.write_text("".join(lines))


def test_a_resume_drops_the_steps_past_its_checkpoint_and_a_line_cut_short(tmp_path):
  path = tmp_path / "metrics.jsonl"
  records = [json.dumps({"step": step, "loss": 1.0 / step}) + "\n" for step in (1, 2, 3, 4)]
  # The kill cut the last line short; a blank line (an edit) is skipped, not refused.
  _write(path, records[:1] + ["\n"] + records[1:] + ['{"step": 5, "lo'])
  log = metrics_log.MetricsLog(str(tmp_path), is_main=True, resume_step=2)
  log.close()
  assert path.read_text() == "".join(records[:2])
  assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_a_damaged_line_is_named_and_the_log_kept(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = ['{"step": 1}\n', '{"step": 2,, }\n', '{"step": 3}\n']
  _write(path, lines)
  with pytest.raises(errors.UserError, match=r"metrics.jsonl, line 2, is not a metrics record"
                                             r" \('\{\"step\": 2,, \}'\): mend or delete that"
                                             r" line, then resume"):
    metrics_log.MetricsLog(str(tmp_path), is_main=True, resume_step=1)
  assert path.read_text() == "".join(lines)


def _events(path):
  """The Event records of a TFRecord events file (length, crc, data, crc each)."""
  data, events, at = path.read_bytes(), [], 0
  while at < len(data):
    (length,) = struct.unpack("<Q", data[at:at + 8])
    events.append(event_pb2.Event.FromString(data[at + 12:at + 12 + length]))
    at += 12 + length + 4
  return events


def test_a_resume_tells_tensorboard_to_hide_the_killed_runs_events_past_its_checkpoint(tmp_path):
  # Was: steps 110 and 120 shown twice, from the killed run's file and the resumed run's.
  first = metrics_log.MetricsLog(str(tmp_path), is_main=True, resume_step=0)
  for step in (10, 20, 30):
    first.write(step, {"loss": 1.0})
  first.close()
  time.sleep(1.1)  # events files are named by the second they were opened in
  resumed = metrics_log.MetricsLog(str(tmp_path), is_main=True, resume_step=20)
  resumed.write(30, {"loss": 0.5})
  resumed.close()
  files = sorted((tmp_path / "tensorboard").iterdir(), key=lambda p: p.stat().st_mtime_ns)
  assert len(files) == 2
  restarts = [(event.step, event.session_log.status) for path in files
              for event in _events(path) if event.HasField("session_log")]
  # TensorBoard hides every earlier event at or past the START marker's step.
  assert restarts == [(21, event_pb2.SessionLog.START)]
