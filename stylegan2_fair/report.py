"""One self-contained page about a training run: curves, metrics, per-attribute bars, image grids.

Reads what the training loop and calc_metrics write into a run dir: stats.jsonl (one line per tick:
{name: {num, mean, std}, timestamp}), metric-<name>.jsonl (official lines: {results, metric,
snapshot_pkl, ...}), fakes*.png / reals.png and training_options.json. Writes an HTML page with
every figure and image embedded as base64 PNG (viewable offline, one file to send), or a single
tall PNG. Plots use matplotlib's Agg canvas directly (no display, no pyplot state).
"""
import base64
import glob
import html
import io
import json
import os
import re

import numpy as np
import PIL.Image

from .imaging import atomic_write

_MAX_CURVES_PER_PLOT = 8


# ----------------------------------------------------------------------------------------------
# Reading a run dir

def read_jsonl(path):
    """Parsed lines of a .jsonl file; a torn last line (a run still writing) is skipped."""
    rows = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def snapshot_kimg(snapshot_pkl):
    """kimg of 'network-snapshot-000120.pkl' (ours and the official name), else None."""
    m = re.search(r'(\d+)\.pkl$', os.path.basename(str(snapshot_pkl or '')))
    return int(m.group(1)) if m else None


def read_run(run_dir):
    """{stats: [tick rows], metrics: {metric: [rows]}, fakes: [(kimg, path)], reals, options}."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f'{run_dir} is not a folder; pass a training run dir (it holds stats.jsonl)')
    stats_path = os.path.join(run_dir, 'stats.jsonl')
    run = dict(stats=read_jsonl(stats_path) if os.path.isfile(stats_path) else [], metrics={}, fakes=[],
               reals=None, options=None)
    for path in sorted(glob.glob(os.path.join(glob.escape(run_dir), 'metric-*.jsonl'))):
        rows = read_jsonl(path)
        if rows:
            run['metrics'][os.path.basename(path)[len('metric-'):-len('.jsonl')]] = rows
    for path in glob.glob(os.path.join(glob.escape(run_dir), 'fakes*.png')):
        m = re.fullmatch(r'fakes(\d+)\.png', os.path.basename(path))
        run['fakes'].append((int(m.group(1)) if m else -1, path))   # fakes_init.png sorts first
    run['fakes'].sort()
    if os.path.isfile(os.path.join(run_dir, 'reals.png')):
        run['reals'] = os.path.join(run_dir, 'reals.png')
    options_path = os.path.join(run_dir, 'training_options.json')
    if os.path.isfile(options_path):
        try:
            with open(options_path, encoding='utf-8') as f:
                run['options'] = json.load(f)
        except ValueError:
            pass
    return run


def stat_series(stats_rows):
    """{stat name: (kimg [T], mean [T])} from stats.jsonl rows; x is Progress/kimg (else the tick)."""
    series = {}
    for tick, row in enumerate(stats_rows):
        progress = row.get('Progress/kimg')
        kimg = progress['mean'] if isinstance(progress, dict) and 'mean' in progress else tick
        for name, value in row.items():
            if isinstance(value, dict) and 'mean' in value and name != 'Progress/kimg':
                xs, ys = series.setdefault(name, ([], []))
                xs.append(kimg)
                ys.append(value['mean'])
    return {name: (np.asarray(xs, float), np.asarray(ys, float)) for name, (xs, ys) in series.items()}


def metric_series(rows):
    """{result key: (x [T], value [T])} of scalar results; x = snapshot kimg when named, else the line number."""
    series = {}
    for i, row in enumerate(rows):
        x = snapshot_kimg(row.get('snapshot_pkl'))
        x = i if x is None else x
        for key, value in (row.get('results') or {}).items():
            if '/' not in key and isinstance(value, (int, float)) and not isinstance(value, bool):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(x)
                ys.append(value)
    return {key: (np.asarray(xs, float), np.asarray(ys, float)) for key, (xs, ys) in series.items()}


def group_breakdowns(results):
    """{prefix: {group: value}} from result keys 'prefix/group' (per-attribute, per-class values)."""
    groups = {}
    for key, value in (results or {}).items():
        prefix, sep, group = key.partition('/')
        if sep and isinstance(value, (int, float)) and not isinstance(value, bool):
            groups.setdefault(prefix, {})[group] = float(value)
    return groups


# ----------------------------------------------------------------------------------------------
# Figures (PNG bytes)

def _figure(width=7.0, height=3.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig):
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format='png')
    return buf.getvalue()


def curve_plot(title, series, xlabel='kimg'):
    fig = _figure()
    ax = fig.add_subplot(111)
    for name, (xs, ys) in list(series.items())[:_MAX_CURVES_PER_PLOT]:
        ax.plot(xs, ys, marker='.' if len(xs) < 30 else None, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='best')
    return _png(fig)


def bar_plot(title, values, reference=None, reference_label=None, sort=True):
    """Bars of {group: value} (sorted by value, as Inclusive GAN's Fig. 2), with an optional dashed line."""
    items = sorted(values.items(), key=lambda kv: kv[1]) if sort else list(values.items())
    fig = _figure(width=max(5.0, 0.35 * len(items) + 2))
    ax = fig.add_subplot(111)
    ax.bar(range(len(items)), [v for _, v in items], color='#4C72B0')
    ax.set_xticks(range(len(items)))
    ax.set_xticklabels([k for k, _ in items], rotation=60 if len(items) > 6 else 0, ha='right' if len(items) > 6 else 'center',
                       fontsize=7)
    if reference is not None:
        ax.axhline(reference, color='black', linestyle='--', linewidth=1, label=reference_label)
        ax.legend(fontsize=7)
    ax.set_title(title)
    ax.grid(axis='y', alpha=0.3)
    return _png(fig)


def training_figures(stats_rows):
    """[(title, png)]: one plot per stat family (Loss/G, Loss/D, Loss/scores, Progress, Timing, hooks...)."""
    series = stat_series(stats_rows)
    families = {}
    for name in sorted(series):
        parts = name.split('/')
        family = '/'.join(parts[:2]) if parts[0] == 'Loss' and len(parts) > 2 else parts[0]
        families.setdefault(family, {})[name] = series[name]
    return [(f'training: {family}', curve_plot(family, curves)) for family, curves in families.items()]


def metric_figures(metrics):
    """[(title, png)]: each metric's values over snapshots, then its per-group bars of the newest line."""
    figures = []
    for metric, rows in sorted(metrics.items()):
        series = metric_series(rows)
        if series:
            figures.append((f'metric: {metric}', curve_plot(metric, series, xlabel='snapshot kimg')))
        latest = rows[-1]
        kimg = snapshot_kimg(latest.get('snapshot_pkl'))
        where = f'kimg {kimg}' if kimg is not None else 'latest'
        for prefix, values in group_breakdowns(latest.get('results')).items():
            if prefix.endswith('_count'):   # class counts, e.g. the fairness metric's histogram
                total = sum(values.values()) or 1
                shares = {k: v / total for k, v in values.items()}
                png = bar_plot(f'{metric}: class shares ({where})', shares, reference=1 / len(shares),
                               reference_label='uniform', sort=False)
                figures.append((f'class distribution: {prefix}', png))
            else:
                figures.append((f'per group: {prefix}', bar_plot(f'{prefix} per group ({where})', values)))
    return figures


def latest_metric_table(metrics):
    """[(metric, key, value, snapshot)] of the newest line of each metric (scalar results only)."""
    table = []
    for metric, rows in sorted(metrics.items()):
        latest = rows[-1]
        for key, value in (latest.get('results') or {}).items():
            if '/' not in key and isinstance(value, (int, float)):
                table.append((metric, key, value, latest.get('snapshot_pkl') or ''))
    return table


# ----------------------------------------------------------------------------------------------
# Pages

def _image_png(path, max_side=1600):
    """PNG bytes of an image file, shrunk so that a 4K grid does not make a 50 MB page."""
    with PIL.Image.open(path) as image:
        image.load()
        if max(image.size) > max_side:
            scale = max_side / max(image.size)
            image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))), PIL.Image.LANCZOS)
        buf = io.BytesIO()
        image.save(buf, format='PNG')
        return buf.getvalue()


def _img_tag(png, alt):
    data = base64.b64encode(png).decode('ascii')
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def build_sections(run):
    """[(heading, [(caption, png)])] shared by the HTML and PNG pages."""
    sections = []
    if run['stats']:
        sections.append(('Training curves', training_figures(run['stats'])))
    if run['metrics']:
        sections.append(('Metrics', metric_figures(run['metrics'])))
    images = []
    if run['fakes']:
        kimg, path = run['fakes'][-1]
        images.append((f'newest generated grid: {os.path.basename(path)}', _image_png(path)))
    if run['reals']:
        images.append(('reals.png', _image_png(run['reals'])))
    if images:
        sections.append(('Images', images))
    return sections


def render_html(run_dir, run, sections):
    name = os.path.basename(os.path.abspath(run_dir))
    parts = [f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(name)}</title>',
             '<style>body{font-family:sans-serif;margin:2em;max-width:1400px}img{max-width:100%;margin:0.5em 0}'
             'table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}'
             'figure{display:inline-block;margin:0.5em;vertical-align:top}figcaption{font-size:small;color:#555}'
             '</style></head><body>', f'<h1>Run {html.escape(name)}</h1>']
    summary = [f'{len(run["stats"])} ticks in stats.jsonl']
    if run['stats']:
        last = run['stats'][-1].get('Progress/kimg')
        if isinstance(last, dict):
            summary.append(f'last tick at {last.get("mean", 0):.1f} kimg')
    summary.append(f'{len(run["metrics"])} metric file(s)')
    parts.append(f'<p>{html.escape("; ".join(summary))}</p>')
    if run['options']:
        keys = ['num_gpus', 'batch_size', 'total_kimg', 'random_seed', 'fair_method', 'hooks']
        picked = {k: run['options'][k] for k in keys if k in run['options']}
        data = (run['options'].get('training_set_kwargs') or {}).get('path')
        if data:
            picked['data'] = data
        if picked:
            parts.append('<p>' + html.escape(', '.join(f'{k}={v}' for k, v in picked.items())) + '</p>')
    table = latest_metric_table(run['metrics'])
    if table:
        parts.append('<h2>Latest metrics</h2><table><tr><th>metric</th><th>result</th><th>value</th><th>snapshot</th></tr>')
        for metric, key, value, snap in table:
            parts.append(f'<tr><td>{html.escape(metric)}</td><td>{html.escape(key)}</td><td>{value:.6g}</td>'
                         f'<td>{html.escape(str(snap))}</td></tr>')
        parts.append('</table>')
    for heading, figures in sections:
        parts.append(f'<h2>{html.escape(heading)}</h2>')
        for caption, png in figures:
            parts.append(f'<figure>{_img_tag(png, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>')
    if not sections:
        parts.append('<p>Nothing to show yet: no stats.jsonl, metric-*.jsonl or image grids in this folder.</p>')
    parts.append('</body></html>')
    return '\n'.join(parts)


def render_png(sections, width=1400):
    """All figures stacked into one tall PNG page (bytes)."""
    tiles = [PIL.Image.open(io.BytesIO(png)).convert('RGB') for _, figures in sections for _, png in figures]
    if not tiles:
        tiles = [PIL.Image.new('RGB', (width, 40), 'white')]
    rows, row, row_w = [], [], 0
    for tile in tiles:   # left-to-right rows no wider than `width`
        if row and row_w + tile.width > width:
            rows.append(row)
            row, row_w = [], 0
        row.append(tile)
        row_w += tile.width
    rows.append(row)
    page_w = max(sum(t.width for t in r) for r in rows)
    page = PIL.Image.new('RGB', (page_w, sum(max(t.height for t in r) for r in rows)), 'white')
    y = 0
    for r in rows:
        x = 0
        for tile in r:
            page.paste(tile, (x, y))
            x += tile.width
        y += max(t.height for t in r)
    buf = io.BytesIO()
    page.save(buf, format='PNG')
    return buf.getvalue()


def write_report(run_dir, out=None):
    """Write the run's report to `out` (default RUN_DIR/report.html; a .png name gives a PNG page),
    atomically. Returns the path."""
    out = out or os.path.join(run_dir, 'report.html')
    run = read_run(run_dir)
    sections = build_sections(run)
    if out.lower().endswith('.png'):
        payload = render_png(sections)
    else:
        payload = render_html(run_dir, run, sections).encode('utf-8')
    atomic_write(out, lambda f: f.write(payload), suffix=os.path.splitext(out)[1])
    return out
