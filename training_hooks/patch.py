"""Add our training-hook points to a checkout of the official StyleGAN2-ADA code.

    python -m training_hooks.patch DIR [--check] [--revert] [--force]
    stylegan2-fair patch-upstream DIR ...

The series (patches/stylegan2-ada-pytorch/*.patch) holds zero-context, insert-only hunks: our
lines and line numbers, no line of the official code (its licence forbids redistribution). With
no context, `git apply --unidiff-zero` cannot tell where a hunk belongs, so this tool checks what
it can first: the checkout's commit, and that each target file is byte for byte the file the
series was made against (the blob ids in the patches' `index` lines).
"""
import dataclasses
import hashlib
import os
import pathlib
import re
import subprocess
import sys

import click

OFFICIAL_REPO = 'NVlabs/stylegan2-ada-pytorch'
OFFICIAL_COMMIT = 'd72cc7d041b42ec8e806021a205ed9349f87c6a4'
SERIES_DIR = pathlib.Path(__file__).resolve().parents[1] / 'patches' / 'stylegan2-ada-pytorch'

_HEADER = re.compile(r'^(diff --git |index |--- |\+\+\+ |(old|new) mode )')
_INSERT_HUNK = re.compile(r'^@@ -\d+,0 \+\d+(,\d+)? @@$')


class PatchError(Exception):
    """The checkout or the series is not in a state the series can be applied to (or reverted from)."""


@dataclasses.dataclass
class FilePatch:
    path: str        # relative to the checkout root
    old_blob: str    # git blob id of the file before the patch (the official file)
    new_blob: str    # ... and after it
    added: int       # lines the patch inserts
    source: pathlib.Path


def read_series(series_dir=SERIES_DIR):
    """The series' file patches, in application order; refuses any hunk that is not a pure insertion."""
    series_dir = pathlib.Path(series_dir)
    files = sorted(series_dir.glob('*.patch'))
    if not files:
        raise PatchError(f'no *.patch files in {series_dir}. Install stylegan2-fair from its git checkout '
                         f'(pip install -e .) so patches/ is there, or pass --patches DIR.')
    out = []
    for source in files:
        current = None
        for number, line in enumerate(source.read_text(encoding='utf-8').splitlines(), 1):
            where = f'{source.name}:{number}'
            if line.startswith('diff --git '):
                current = FilePatch(path=line.split(' b/', 1)[-1], old_blob='', new_blob='', added=0, source=source)
                out.append(current)
            elif current is None:
                raise PatchError(f'{where}: expected a "diff --git" header first')
            elif line.startswith('index '):
                blobs = line.split()[1].split('..')
                if len(blobs) != 2 or not all(re.fullmatch(r'[0-9a-f]{40}', b) for b in blobs):
                    raise PatchError(f'{where}: the index line needs full blob ids (make patches with git diff --full-index)')
                current.old_blob, current.new_blob = blobs
            elif _HEADER.match(line) or _INSERT_HUNK.match(line):
                continue
            elif line.startswith('+'):
                current.added += 1
            else:
                raise PatchError(f'{where}: {line[:40]!r} is not an inserted line or a bare insert-only hunk '
                                 f'header; the series must hold only our added lines (git diff -U0, no context)')
    for patch in out:
        if not patch.old_blob:
            raise PatchError(f'{patch.source.name}: {patch.path} has no index line with blob ids')
    return out


def blob_id(path):
    """The git blob id of a file's bytes (what `git hash-object --no-filters` prints)."""
    data = pathlib.Path(path).read_bytes()
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def _git(args, cwd):
    try:
        return subprocess.run(['git', *args], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as err:
        raise PatchError('git is not installed or not on PATH; install git (the series is applied with git apply)') from err


def _repo_position(checkout):
    """(HEAD commit, path prefix of `checkout` inside its repository), or (None, '') outside any git repository."""
    head = _git(['rev-parse', 'HEAD'], checkout)
    if head.returncode != 0:
        return None, ''
    prefix = _git(['rev-parse', '--show-prefix'], checkout).stdout.strip()
    return head.stdout.strip(), prefix


def _check_commit(checkout, head, prefix, commit):
    short = commit[:7]
    if head is None:
        raise PatchError(f'{checkout} is not a git checkout, so its commit cannot be checked. Clone '
                         f'{OFFICIAL_REPO} and `git checkout {short}`, or pass --force if these are the files '
                         f'of {short} (each file is still checked byte for byte).')
    if prefix:
        raise PatchError(f'{checkout} lies inside another git repository (at {prefix!r}, HEAD {head[:7]}), so '
                         f'its commit cannot be checked. Pass --force if these are the files of {short} '
                         f'(each file is still checked byte for byte).')
    if head != commit:
        raise PatchError(f'{checkout} is at commit {head[:7]}, but the series was made for {short} (the final '
                         f'commit of {OFFICIAL_REPO}). Run `git -C {checkout} checkout {short}`, or pass --force '
                         f'if train.py and training/ are unchanged since {short} (each file is still checked).')


def _check_files(checkout, series, revert, commit):
    """Every target file must be exactly the pre-image (apply) or post-image (revert) of its patch."""
    problems, already = [], []
    for patch in series:
        path = pathlib.Path(checkout) / patch.path
        if not path.is_file():
            problems.append(f'{patch.path} is missing: point at the root of a {OFFICIAL_REPO} checkout '
                            f'(the folder holding train.py)')
            continue
        have = blob_id(path)
        want, other = (patch.new_blob, patch.old_blob) if revert else (patch.old_blob, patch.new_blob)
        if have == want:
            continue
        if have == other:
            already.append(patch.path)
        elif revert:
            problems.append(f'{patch.path} was edited after patching; remove the lines marked '
                            f'"# stylegan2-fair" by hand, or restore it with `git checkout -- {patch.path}`')
        else:
            problems.append(f'{patch.path} differs from its {commit[:7]} version (local edits or another '
                            f'version), and zero-context patches would land on the wrong lines; restore it with '
                            f'`git checkout -- {patch.path}` or use a fresh clone')
    if already and not problems and len(already) == len(series):
        raise PatchError(f'{checkout} is not patched: nothing to revert' if revert else
                         f'{checkout} already has the stylegan2-fair hook points (undo with --revert)')
    if already:
        state = 'not patched' if revert else 'already patched'
        problems += [f'{path} is {state} while other files are not' for path in already]
    if problems:
        raise PatchError(f'cannot {"revert" if revert else "patch"} {checkout}:\n  ' + '\n  '.join(problems))


def patch_checkout(checkout, series_dir=SERIES_DIR, revert=False, check=False, force=False, commit=OFFICIAL_COMMIT):
    """Apply (or revert) the series in `checkout`; returns a report of what changed, raises PatchError if it can't."""
    checkout = os.path.abspath(checkout)
    if not os.path.isdir(checkout):
        raise PatchError(f'{checkout}: no such folder; give the root of a {OFFICIAL_REPO} checkout')
    series = read_series(series_dir)
    head, prefix = _repo_position(checkout)
    if not force:
        _check_commit(checkout, head, prefix, commit)
    _check_files(checkout, series, revert, commit)

    args = ['apply', '--unidiff-zero'] + (['-R'] if revert else []) + (['--check'] if check else [])
    if prefix:  # git apply reads paths from the repository root
        args.append(f'--directory={prefix.rstrip("/")}')
    result = _git(args + [str(p) for p in sorted({patch.source for patch in series})], checkout)
    if result.returncode != 0:
        raise PatchError(f'git apply {"-R " if revert else ""}failed in {checkout}:\n{result.stderr.strip()}')
    if not check:
        for patch in series:  # what was written must be exactly what the series was made to produce
            if blob_id(os.path.join(checkout, patch.path)) != (patch.old_blob if revert else patch.new_blob):
                raise PatchError(f'{patch.path}: after git apply the file is not the expected result; restore it '
                                 f'with `git checkout -- {patch.path}` and report this')
    return _report(checkout, head, series, revert, check)


def _report(checkout, head, series, revert, check):
    verb = ('would revert' if check else 'reverted') if revert else ('would apply' if check else 'applied')
    at = f'commit {head[:7]}' if head else 'not a git checkout'
    lines = [f'{verb[0].upper() + verb[1:]} {len({p.source for p in series})} patches {"from" if revert else "to"} {checkout} ({at}):']
    width = max(len(p.path) for p in series)
    sign = '-' if revert else '+'
    lines += [f'  {p.path:<{width}}  {sign}{p.added} lines  ({p.source.name})' for p in series]
    if not revert and not check:
        lines += ['Every added line ends in a "# stylegan2-fair" comment. Train with our hooks:',
                  '  python train.py --outdir=... --data=... --fair-method=NAME [--hook-opt KEY=VALUE ...]',
                  '(stylegan2-fair must be importable there: pip install -e <stylegan2-fair checkout>).',
                  f'Undo with: python -m training_hooks.patch --revert {checkout}']
    return '\n'.join(lines)


@click.command('patch-upstream')
@click.argument('checkout', metavar='DIR')
@click.option('--check', is_flag=True, help='Dry run: exit status 0 if the series would apply (or revert) cleanly')
@click.option('--revert', is_flag=True, help='Remove our hook points again (git apply -R)')
@click.option('--force', is_flag=True, help=f'Skip the commit check ({OFFICIAL_COMMIT[:7]}); files are still checked byte for byte')
@click.option('--patches', 'series_dir', default=str(SERIES_DIR), show_default=True, metavar='DIR',
              help='Folder holding the *.patch series')
def patch_upstream(checkout, check, revert, force, series_dir):
    """Add stylegan2-fair's training-hook points (--fair-method) to an official StyleGAN2-ADA checkout.

    \b
    Example:
      git clone https://github.com/NVlabs/stylegan2-ada-pytorch && git -C stylegan2-ada-pytorch checkout d72cc7d
      stylegan2-fair patch-upstream stylegan2-ada-pytorch
      cd stylegan2-ada-pytorch && python train.py --outdir=runs --data=data.zip --fair-method=dia
    """
    try:
        report = patch_checkout(checkout, series_dir=series_dir, revert=revert, check=check, force=force)
    except PatchError as err:
        click.echo(f'Error: {err}', err=True)
        sys.exit(1)
    click.echo(report)


if __name__ == '__main__':
    patch_upstream()  # pylint: disable=no-value-for-parameter
