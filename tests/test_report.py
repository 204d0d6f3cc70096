"""`stylegan2-fair report RUN_DIR`: one offline page from a run dir's stats, metrics and image grids."""
import base64
import io
import json
import re

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

from stylegan2_fair import report
from stylegan2_fair.cli.report import report as report_command


def _png(path, colour, size=(64, 32)):
    PIL.Image.new('RGB', size, colour).save(path)


@pytest.fixture
def run_dir(tmp_path):
    """A fake run: 3 ticks of stats, two snapshots of an IvOM metric with per-attribute values, a
    fairness line with class counts, and two fake grids."""
    with open(tmp_path / 'stats.jsonl', 'w') as f:
        for tick in range(3):
            row = {'Progress/kimg': {'num': 1, 'mean': 4.0 * tick, 'std': 0},
                   'Loss/G/loss': {'num': 8, 'mean': 1.0 / (tick + 1), 'std': 0.1},
                   'Loss/D/loss': {'num': 8, 'mean': 0.5, 'std': 0.1},
                   'Timing/sec_per_kimg': {'num': 1, 'mean': 10.0, 'std': 0}, 'timestamp': 1.0e9 + tick}
            f.write(json.dumps(row) + '\n')
        f.write('{"Progress/kimg": {"num": 1, "me')   # a torn line from a run still writing
    with open(tmp_path / 'metric-ivom8.jsonl', 'w') as f:
        for kimg, value in [(4, 0.5), (8, 0.4)]:
            f.write(json.dumps(dict(results={'ivom8': value, 'ivom8_std': 0.1, 'ivom8/Red': value - 0.1,
                                             'ivom8/Green': value + 0.2},
                                    metric='ivom8', total_time=1.0, total_time_str='1s', num_gpus=1,
                                    snapshot_pkl=f'network-snapshot-{kimg:06d}.pkl', timestamp=1.0e9)) + '\n')
    with open(tmp_path / 'metric-fairness.jsonl', 'w') as f:
        f.write(json.dumps(dict(results={'fairness': 0.2, 'fairness_count/red': 30, 'fairness_count/green': 10},
                                metric='fairness', snapshot_pkl='network-snapshot-000008.pkl')) + '\n')
    _png(tmp_path / 'fakes_init.png', 'black')
    _png(tmp_path / 'fakes000004.png', 'red')
    _png(tmp_path / 'fakes000008.png', 'blue')
    _png(tmp_path / 'reals.png', 'green')
    return tmp_path


def _embedded_images(page):
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_report_command_writes_a_self_contained_html_page(run_dir):
    result = CliRunner().invoke(report_command, [str(run_dir)])
    assert result.exit_code == 0, result.output
    page = (run_dir / 'report.html').read_text()
    images = _embedded_images(page)
    assert len(images) >= 6   # curves per family, the metric curve, two bar charts, two grids
    assert all(png.startswith(b'\x89PNG') for png in images)
    assert 'src="http' not in page and 'src="/' not in page   # nothing to fetch: viewable offline
    assert 'ivom8' in page and 'Loss/G' in page


def test_report_embeds_the_newest_fake_grid(run_dir):
    page = open(report.write_report(str(run_dir))).read()
    assert 'fakes000008.png' in page and 'fakes000004.png' not in page
    colours = set()
    for png in _embedded_images(page):
        image = PIL.Image.open(io.BytesIO(png)).convert('RGB')
        if image.size == (64, 32):
            colours.add(image.getpixel((0, 0)))
    assert colours == {(0, 0, 255), (0, 128, 0)}   # the kimg-8 grid (blue) and reals (green)


def test_metric_curves_use_snapshot_kimg_and_skip_per_group_keys(run_dir):
    rows = report.read_run(str(run_dir))['metrics']['ivom8']
    series = report.metric_series(rows)
    assert set(series) == {'ivom8', 'ivom8_std'}
    assert series['ivom8'][0].tolist() == [4, 8] and series['ivom8'][1].tolist() == [0.5, 0.4]


def test_per_attribute_values_come_from_the_newest_line(run_dir):
    rows = report.read_run(str(run_dir))['metrics']['ivom8']
    groups = report.group_breakdowns(rows[-1]['results'])
    assert groups == {'ivom8': {'Red': pytest.approx(0.3), 'Green': pytest.approx(0.6)}}


def test_training_curves_skip_a_torn_last_line(run_dir):
    run = report.read_run(str(run_dir))
    assert len(run['stats']) == 3
    xs, ys = report.stat_series(run['stats'])['Loss/G/loss']
    assert xs.tolist() == [0, 4, 8] and np.allclose(ys, [1, 0.5, 1 / 3])


def test_report_can_be_one_png_page(run_dir, tmp_path):
    out = tmp_path / 'page.png'
    result = CliRunner().invoke(report_command, [str(run_dir), f'--out={out}'])
    assert result.exit_code == 0, result.output
    with PIL.Image.open(out) as page:
        assert page.format == 'PNG' and page.height > 300


def test_report_of_an_empty_folder_says_there_is_nothing_yet(tmp_path):
    page = open(report.write_report(str(tmp_path))).read()
    assert 'Nothing to show yet' in page


def test_report_rejects_an_unknown_output_type(run_dir):
    result = CliRunner().invoke(report_command, [str(run_dir), '--out=x.pdf'])
    assert result.exit_code != 0 and '.html or .png' in result.output
