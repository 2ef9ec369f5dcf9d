"""metrics.jsonl on resume: what a killed run logged past its checkpoint is dropped, nothing
else, and a damaged log is named rather than rewritten."""

import json

import pytest

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
