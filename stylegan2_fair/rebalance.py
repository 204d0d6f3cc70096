"""Model rebalancing: a class-balanced synthetic dataset searched out of a biased generator.

"Fair GANs through model rebalancing" (arXiv 2308.08638), Algorithm 2, run for every target
class t of an auxiliary classifier C:

    root  = the first random latent whose image C assigns to t
    queue = [root]                                    (FIFO: the search is breadth-first)
    while fewer than N latents are kept:
        v = queue.pop(); if C(G(v)) == t: keep v and enqueue each of its 3 children
        v + noise that lies farther from the root than v does

Noise: z space N(0, sigma^2) (sigma 0.5), w+ space elementwise U(-delta, delta) (delta 0.3).
Images are rendered with truncation psi 0.7 and constant noise, as in the authors' search. When
a class's queue runs dry (every child rejected), or its tree reached `max_per_root` kept latents
(the paper's xi), the next qualifying random latent starts a new tree.

Batching: every step takes candidates from all unfinished classes (their queue fronts, or
random root candidates for a class without a tree), renders them with ONE generator call and
classifies them with ONE classifier call. Popping the first k items of a FIFO at once keeps
the visiting order of the one-at-a-time algorithm, so batching changes the speed, not the result.

Determinism: root candidates and child noise come from counter-based random streams keyed by
(seed, class, index), so what a class keeps does not depend on the batch size, on which classes
share a batch, or on interruptions. A resumed search keeps exactly what an uninterrupted one
would have kept: nothing lost, nothing duplicated.

Checkpoints (`state_dir`): `chunk-NNNNNN.npz` holds the samples kept since the previous
checkpoint (latents, uint8 images, provenance); `state.npz`, written last and atomically, lists
the chunks and each class's search state. The queue is stored as (parent, child) index pairs
and rebuilt from the kept latents and the counter-based noise. A chunk that state.npz does not
list is a leftover of a crash and is deleted on load.

Output (`write_dataset`): a dataset in dataset_tool's layout whose dataset.json "labels" are the
classifier's class indices (plus "class_names" and the search options under "rebalance"), and
`latents.npz` beside the images: the latent of every image in image order, with its class, G
label, tree, parent and distance to its root.
"""
import collections
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import time
from typing import Optional

import numpy as np
import torch

from .fileio import atomic_write, atomic_write_text
from .gates import GateError, create_gate
from .imaging import to_uint8

SPACES = ('z', 'w')
NOISE_MODES = ('const', 'random', 'none')
G_LABEL_MODES = ('none', 'target', 'random')
STATE_VERSION = 1
LATENTS_FILE = 'latents.npz'     # inside the written dataset: the latents of its images
_ROOT_STREAM, _CHILD_STREAM, _LABEL_STREAM = 0, 1, 2
_ROOT_BLOCK = 256                # root candidates are drawn in blocks of this many per class


class RebalanceError(ValueError):
    """The search cannot run or finish as asked; the message names the problem and the fix."""


@dataclasses.dataclass
class SearchOptions:
    """What the search does (see the module docstring); defaults follow the paper's z-space search."""
    per_class: int = 1000                  # N: latents to keep per target class
    space: str = 'z'                       # 'z' or 'w' (w+: one w per synthesis layer)
    truncation_psi: float = 0.7
    noise_mode: str = 'const'
    sigma: float = 0.5                     # z: child = parent + N(0, sigma^2)
    delta: float = 0.3                     # w: child = parent + U(-delta, delta), elementwise
    num_children: int = 3
    max_candidates: Optional[int] = None   # per class, candidates examined; default max(100 N, 10,000)
    max_per_root: Optional[int] = None     # xi: latents kept per tree before a new root is drawn
    batch: int = 256                       # candidates per generator/classifier call
    min_confidence: float = 0.0            # keep only if C's probability of t reaches this
    dedup_dist: float = 0.0                # reject a latent closer than this to a kept one of its class
    g_label: str = 'none'                  # G's class: none | target | random | an integer
    classes: Optional[list] = None         # target class indices (default: every class of C)
    gate: str = 'none'                     # an image must pass this gate before C judges it (gates.py)
    seed: int = 0

    @property
    def candidate_cap(self):
        return self.max_candidates if self.max_candidates is not None else max(100 * self.per_class, 10000)

    def check(self, G, classifier):
        """Normalise and validate against the networks; raises RebalanceError naming the fix."""
        if self.per_class < 1:
            raise RebalanceError(f'per_class={self.per_class}: ask for at least 1 sample per class')
        if self.space not in SPACES:
            raise RebalanceError(f'space={self.space!r}: choose z or w')
        if self.noise_mode not in NOISE_MODES:
            raise RebalanceError(f'noise_mode={self.noise_mode!r}: choose one of {", ".join(NOISE_MODES)}')
        for name in ('batch', 'num_children'):
            if getattr(self, name) < 1:
                raise RebalanceError(f'{name}={getattr(self, name)}: must be at least 1')
        for name in ('max_candidates', 'max_per_root'):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise RebalanceError(f'{name}={getattr(self, name)}: must be at least 1 (or unset)')
        if self.sigma <= 0 or self.delta <= 0:
            raise RebalanceError(f'sigma={self.sigma}, delta={self.delta}: mutation sizes must be positive')
        if not 0 <= self.min_confidence <= 1:
            raise RebalanceError(f'min_confidence={self.min_confidence}: a probability, in [0, 1]')
        if self.dedup_dist < 0:
            raise RebalanceError(f'dedup_dist={self.dedup_dist}: must be >= 0 (0 turns it off)')
        num_classes, names = classifier.num_classes, list(classifier.class_names)
        classes = list(range(num_classes)) if self.classes is None else self.classes
        # Names or indices: a name wins over an index, so classes named '0'..'9' mean what they say.
        classes = [names.index(str(t)) if str(t) in names else int(t) if str(t).lstrip('-').isdigit() else -1
                   for t in classes]
        bad = [t for t in classes if not 0 <= t < num_classes]
        if bad or not classes or len(set(classes)) != len(classes):
            raise RebalanceError(f'classes={self.classes}: give distinct class indices of the classifier, 0..'
                                 f'{num_classes - 1} ({", ".join(classifier.class_names)})')
        self.classes = classes
        c_dim = int(getattr(G, 'c_dim', 0))
        label = str(self.g_label)
        if label not in G_LABEL_MODES and not label.lstrip('-').isdigit():
            raise RebalanceError(f'g_label={self.g_label!r}: use none, target, random or a class index of G')
        if c_dim == 0 and label != 'none':
            raise RebalanceError(f'g_label={self.g_label!r} but the generator is unconditional; use g_label=none')
        if c_dim > 0 and label == 'none':
            raise RebalanceError(f'the generator is conditional ({c_dim} classes): choose its label with '
                                 f'g_label=target (G class = target class), random, or a class index')
        if label == 'target' and max(classes) >= c_dim:
            raise RebalanceError(f'g_label=target needs G classes for every target class, but G has {c_dim} and '
                                 f'the classifier {num_classes}; use g_label=random or a class index')
        if label.lstrip('-').isdigit() and not 0 <= int(label) < c_dim:
            raise RebalanceError(f'g_label={label}: G has classes 0..{c_dim - 1}')
        self.g_label = label
        return self

    def fingerprint(self):
        """The options that decide what is kept (N, the cap and the batch size only decide when to stop / speed)."""
        skip = {'per_class', 'max_candidates', 'batch'} | ({'gate'} if self.gate == 'none' else set())
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


class _Rows:
    """A growable float32 array of latents (amortised appends)."""

    def __init__(self, shape):
        self.shape = tuple(shape)
        self.data = np.zeros((16,) + self.shape, dtype=np.float32)
        self.count = 0

    def append(self, row):
        if self.count == len(self.data):
            self.data = np.concatenate([self.data, np.zeros_like(self.data)])
        self.data[self.count] = row
        self.count += 1

    def __getitem__(self, i):
        return self.data[:self.count][i]

    def min_distance(self, latent):
        if self.count == 0:
            return math.inf
        diff = self.data[:self.count].reshape(self.count, -1) - latent.reshape(1, -1)
        return float(np.sqrt(np.einsum('ij,ij->i', diff, diff).min()))


def _distances(rows, point):
    """Euclidean distance of each row (any shape after the first axis) to `point`, in float64."""
    diff = rows.reshape(len(rows), -1).astype(np.float64) - point.reshape(1, -1).astype(np.float64)
    return np.sqrt(np.einsum('ij,ij->i', diff, diff)).tolist()


class _ClassSearch:
    """One target class: its kept latents with provenance, its trees, its FIFO queue, its counters."""

    COUNTERS = ('evaluated', 'root_evaluated', 'root_hits', 'rejected_gate', 'rejected_class', 'rejected_confidence',
                'rejected_duplicate', 'pruned_distance', 'dropped_tree_full')

    def __init__(self, index, name, latent_shape):
        self.index, self.name = index, name
        self.kept = _Rows(latent_shape)
        self.tree, self.parent, self.dist, self.g_label, self.confidence = [], [], [], [], []
        self.trees = []                       # [root's kept index, latents kept in the tree]
        self.queue = collections.deque()      # (parent j, child c, latent, distance to the root)
        self.root_pos = 0                     # next position in this class's root stream
        self.best_confidence = 0.0            # highest p(t) seen on a random root candidate
        self.lookahead = {}                   # root candidates rendered past the last root: pos -> results
        self.counts = dict.fromkeys(self.COUNTERS, 0)

    @property
    def num_kept(self):
        return self.kept.count

    def root_demand(self):
        # Expected draws to the next root are 1 / p(t): ask for about twice that (at least 8), so a rare
        # class gets a wide slice of the batch and a common one wastes little after its hit.
        p_hat = (self.counts['root_hits'] + 0.5) / (self.counts['root_evaluated'] + 1)
        return max(8, math.ceil(2 / p_hat))

    def state(self):
        return dict(root_pos=self.root_pos, best_confidence=self.best_confidence, trees=self.trees,
                    counts=self.counts, num_kept=self.num_kept)


class RebalanceSearch:
    """Algorithm 2 for all target classes at once, batched, deterministic and resumable.

    G: a Generator (G(z, c, truncation_psi=, noise_mode=), .mapping, .synthesis). classifier: a
    `stylegan2_fair.classifiers.Classifier` ([-1, 1] images -> probabilities). state_dir: where
    checkpoints go (None: keep everything in memory). identity: extra data that must match for a
    checkpoint to be resumed (e.g. hashes of the network and classifier files).
    """

    def __init__(self, G, classifier, options, device='cpu', state_dir=None, checkpoint_seconds=30.0,
                 identity=None, log=print):
        self.device = torch.device(device)
        self.G = G.eval().requires_grad_(False).to(self.device)
        self.classifier = classifier.to(self.device).eval()
        self.options = options.check(G, classifier)
        try:  # an unknown gate name, or a gate that cannot be built here
            self.gate = create_gate(options.gate)
        except GateError as err:
            raise RebalanceError(str(err)) from err
        self.state_dir = state_dir
        self.checkpoint_seconds = float(checkpoint_seconds)
        self.identity = dict(identity or {})
        self.log = log
        if options.space == 'z':
            self.latent_shape = (int(G.z_dim),)
        else:
            self.latent_shape = (int(G.num_ws), int(G.w_dim))
        names = classifier.class_names
        self.searches = [_ClassSearch(t, names[t], self.latent_shape) for t in options.classes]
        self.num_steps = 0
        self.num_chunks = 0
        self.elapsed = 0.0
        self._pending = []          # samples kept since the last checkpoint (dicts of arrays)
        self._synthesis_kwargs = dict(noise_mode=options.noise_mode)
        from .networks import Generator
        if self.device.type == 'cpu' and isinstance(G, Generator):
            # Grouped convolutions (the fused path, best on GPU) run batches 2x slower on CPU: same images.
            self._synthesis_kwargs['fused_modconv'] = False
        self._block_cache = {}
        self._stream_bases = {}
        self._torch_rng = torch.Generator()
        if state_dir is not None and os.path.isfile(os.path.join(state_dir, 'state.npz')):
            self._load()

    # Random streams ---------------------------------------------------------------------------
    def _seeded(self, class_index, stream, index):
        """The shared torch generator, seeded for item `index` of (class, stream): counter-based, so any
        item can be redrawn alone (a resumed search, a different batch size) and comes out the same."""
        key = (class_index, stream)
        if key not in self._stream_bases:
            entropy = np.random.SeedSequence([self.options.seed, class_index, stream])
            self._stream_bases[key] = int(entropy.generate_state(1)[0])
        # The CPU generator keeps 32 bits of the seed: items of one stream stay distinct below 2^32.
        return self._torch_rng.manual_seed((self._stream_bases[key] + index) % 2**32)

    def _root_block(self, class_index, block):
        key = (class_index, block)
        if key not in self._block_cache:
            if len(self._block_cache) > 4 * len(self.searches):
                self._block_cache.clear()
            z = torch.randn([_ROOT_BLOCK, self.G.z_dim], generator=self._seeded(class_index, _ROOT_STREAM, block))
            labels = torch.randint(max(int(self.G.c_dim), 1), [_ROOT_BLOCK],
                                   generator=self._seeded(class_index, _LABEL_STREAM, block))
            self._block_cache[key] = (z.numpy(), labels.numpy())
        return self._block_cache[key]

    def _root_candidate(self, s, pos):
        """(z, G label) of position `pos` in class s's stream of random root candidates."""
        z, labels = self._root_block(s.index, pos // _ROOT_BLOCK)
        mode = self.options.g_label
        label = {'none': -1, 'target': s.index, 'random': int(labels[pos % _ROOT_BLOCK])}.get(mode)
        return z[pos % _ROOT_BLOCK], (int(mode) if label is None else label)

    def _child_noise(self, s, j):
        generator = self._seeded(s.index, _CHILD_STREAM, j)
        shape = (self.options.num_children,) + self.latent_shape
        if self.options.space == 'z':
            return (torch.randn(shape, generator=generator) * self.options.sigma).numpy()
        return ((torch.rand(shape, generator=generator) * 2 - 1) * self.options.delta).numpy()

    # Search -----------------------------------------------------------------------------------
    def finished(self, s):
        return s.num_kept >= self.options.per_class or s.counts['evaluated'] >= self.options.candidate_cap

    def _allocate(self, active):
        """Slots of the next batch per active class: water-filling up to each class's demand."""
        cap = self.options.candidate_cap
        demand = [min(len(s.queue) if s.queue else s.root_demand(), cap - s.counts['evaluated']) for s in active]
        slots, left = [0] * len(active), self.options.batch
        open_ = [i for i, d in enumerate(demand) if d > 0]
        while left > 0 and open_:
            share = left // len(open_)
            if share == 0:  # fewer slots than classes (e.g. batch 1): take turns
                start = self.num_steps % len(open_)
                for i in (open_[start:] + open_[:start])[:left]:
                    slots[i] += 1
                break
            for i in open_:
                give = min(share, demand[i] - slots[i])
                slots[i] += give
                left -= give
            open_ = [i for i in open_ if slots[i] < demand[i]]
        return slots

    def _take(self, s, n):
        """Up to n candidates of class s: ('child', j, c, latent, dist) from its queue, or ('root', pos, z, label)."""
        if not s.queue:
            return [('root', pos) + self._root_candidate(s, pos) for pos in range(s.root_pos, s.root_pos + n)]
        items, xi = [], self.options.max_per_root
        while s.queue and len(items) < n:
            j, c, latent, dist = s.queue.popleft()
            if xi is not None and s.trees[s.tree[j]][1] >= xi:
                s.counts['dropped_tree_full'] += 1   # its tree is complete: never rendered
                continue
            items.append(('child', j, c, latent, dist))
        return items

    @torch.no_grad()
    def _render(self, batch):
        """Images of every candidate (list of (class search, item)) with one G call -> (images, latents, G labels)."""
        opts, G = self.options, self.G
        labels = [(item[3] if item[0] == 'root' else s.g_label[item[1]]) for s, item in batch]
        c = torch.zeros([len(batch), G.c_dim])
        rows = [i for i, label in enumerate(labels) if label >= 0]
        c[rows, [labels[i] for i in rows]] = 1
        c = c.to(self.device)
        latents = [None] * len(batch)
        roots = [i for i, (_, item) in enumerate(batch) if item[0] == 'root']
        for i, (_, item) in enumerate(batch):
            if item[0] == 'child':
                latents[i] = item[3]
        if opts.space == 'z':
            for i in roots:
                latents[i] = batch[i][1][2]
            z = torch.from_numpy(np.stack(latents)).to(self.device)
            images = G(z, c, truncation_psi=opts.truncation_psi, **self._synthesis_kwargs)
        else:
            if roots:  # a tree starts at a mapped (truncated) random z, as a w+ latent
                z = torch.from_numpy(np.stack([batch[i][1][2] for i in roots])).to(self.device)
                ws = G.mapping(z, c[roots], truncation_psi=opts.truncation_psi).cpu().numpy().astype(np.float32)
                for k, i in enumerate(roots):
                    latents[i] = ws[k]
            ws = torch.from_numpy(np.stack(latents)).to(self.device)
            images = G.synthesis(ws, **self._synthesis_kwargs)
        return images.to(torch.float32), latents, labels

    def step(self):
        """One batch: take candidates from every unfinished class, render, classify, settle. False when done."""
        for s in self.searches:
            if not s.queue and s.lookahead and not self.finished(s):
                self._root_from_lookahead(s)
        active = [s for s in self.searches if not self.finished(s)]
        if not active:
            return False
        batch = []
        for s, n in zip(active, self._allocate(active)):
            batch += [(s, item) for item in self._take(s, n)] if n else []
        if not batch:
            return any(not self.finished(s) for s in self.searches)
        images, latents, labels = self._render(batch)
        # Classify the image as it will be stored (clipped to [-1, 1], 8 bits), so that a dataset label
        # is the classifier's decision on that very image: a young G strays far outside [-1, 1].
        images_u8 = to_uint8(images.cpu().numpy(), (-1, 1))
        stored = torch.from_numpy(images_u8).to(self.device).to(torch.float32) / 127.5 - 1
        probs = self.classifier(stored).to(torch.float32).cpu().numpy()
        if self.gate is not None:  # a gated-out image gets no class: all-NaN probabilities
            passed = np.asarray(self.gate(images_u8))
            if passed.shape != (len(images_u8),):
                raise RebalanceError(f'gate={self.options.gate} returned shape {list(passed.shape)} for '
                                     f'{len(images_u8)} images; a gate returns one yes/no per image')
            probs[~passed.astype(bool)] = np.nan
        for s in active:
            rows = [i for i, (owner, _) in enumerate(batch) if owner is s]
            if rows:
                self._settle(s, [batch[i][1] for i in rows], [latents[i] for i in rows], [labels[i] for i in rows],
                             probs[rows], images_u8[rows])
        self.num_steps += 1
        return True

    def _qualifies(self, s, latent, probs):
        """None if kept, else the counter of the reason it is rejected."""
        if np.isnan(probs).all():
            return 'rejected_gate'
        if int(np.argmax(probs)) != s.index:
            return 'rejected_class'
        if probs[s.index] < self.options.min_confidence:
            return 'rejected_confidence'
        if self.options.dedup_dist > 0 and s.kept.min_distance(latent) < self.options.dedup_dist:
            return 'rejected_duplicate'
        return None

    def _settle(self, s, items, latents, labels, probs, images):
        if items[0][0] == 'root':
            for k, (item, latent, label, p, image) in enumerate(zip(items, latents, labels, probs, images)):
                self._count_root_candidate(s, p)
                if self._qualifies(s, latent, p) is None:
                    # The first qualifying random latent is the root. The candidates after it are kept
                    # aside, not yet counted: the next root search of this class starts with them, as
                    # one-at-a-time would (a resume, which does not save them, renders them again).
                    s.root_pos = item[1] + 1
                    s.lookahead = {it[1]: rest for it, *rest in list(zip(items, latents, labels, probs, images))[k + 1:]}
                    self._start_tree(s, latent, label, p, image)
                    return
            s.root_pos = items[-1][1] + 1
            return
        xi = self.options.max_per_root
        for k, (item, latent, label, p, image) in enumerate(zip(items, latents, labels, probs, images)):
            _, j, c, _, dist = item
            if s.num_kept >= self.options.per_class:
                # Done. The unsettled children go back to the queue front, uncounted, so that a rerun
                # with a larger N (--keep-state) continues exactly where a longer run would have.
                s.queue.extendleft((it[1], it[2], it[3], it[4]) for it in reversed(items[k:]))
                break
            s.counts['evaluated'] += 1
            tree = s.tree[j]
            if xi is not None and s.trees[tree][1] >= xi:
                s.counts['dropped_tree_full'] += 1
                continue
            reason = self._qualifies(s, latent, p)
            if reason is not None:
                s.counts[reason] += 1
                continue
            self._keep(s, latent, tree, j, dist, label, p, image)

    def _start_tree(self, s, latent, label, probs, image):
        s.trees.append([s.num_kept, 0])
        self._keep(s, latent, len(s.trees) - 1, -1, 0.0, label, probs, image)

    def _count_root_candidate(self, s, probs):
        s.counts['evaluated'] += 1
        s.counts['root_evaluated'] += 1
        if np.isnan(probs).all():
            s.counts['rejected_gate'] += 1
        else:
            s.counts['root_hits'] += int(np.argmax(probs) == s.index)
            s.best_confidence = max(s.best_confidence, float(probs[s.index]))

    def _root_from_lookahead(self, s):
        """Look for the next root among candidates already rendered (no G call), in stream order."""
        while s.root_pos in s.lookahead and not self.finished(s):
            latent, label, probs, image = s.lookahead.pop(s.root_pos)
            s.root_pos += 1
            self._count_root_candidate(s, probs)
            if self._qualifies(s, latent, probs) is None:
                self._start_tree(s, latent, label, probs, image)
                break
        s.lookahead = {pos: v for pos, v in s.lookahead.items() if pos >= s.root_pos}

    def _keep(self, s, latent, tree, parent, dist, label, probs, image):
        j = s.num_kept
        s.kept.append(latent)
        s.tree.append(tree)
        s.parent.append(parent)
        s.dist.append(dist)
        s.g_label.append(label)
        s.confidence.append(float(probs[s.index]))
        s.trees[tree][1] += 1
        self._pending.append(dict(cls=s.index, index=j, latent=np.array(latent, np.float32), image=np.array(image),
                                  tree=tree, parent=parent, dist=dist, g_label=label, confidence=float(probs[s.index])))
        self._enqueue_children(s, j)

    def _enqueue_children(self, s, j):
        # Children are enqueued even after N is reached, so a rerun with a larger N continues the same trees.
        tree = s.tree[j]
        if self.options.max_per_root is not None and s.trees[tree][1] >= self.options.max_per_root:
            return
        root, dist = s.kept[s.trees[tree][0]], s.dist[j]
        children = s.kept[j] + self._child_noise(s, j)
        for c, (child, child_dist) in enumerate(zip(children, _distances(children, root))):
            if child_dist > dist:     # Algorithm 2, line 13: move away from the root
                s.queue.append((j, c, child, child_dist))
            else:
                s.counts['pruned_distance'] += 1

    def run(self, progress=True, on_batch=None):
        """Search until every class has N latents or hit the cap; checkpoint as it goes. Returns self."""
        bars = self._progress_bars() if progress else None
        start = last_checkpoint = time.time()
        base_elapsed = self.elapsed
        try:
            while self.step():
                self.elapsed = base_elapsed + time.time() - start
                if bars:
                    for s, bar in zip(self.searches, bars):
                        bar.update(min(s.num_kept, self.options.per_class) - bar.n)
                        bar.set_postfix_str(f'tried {s.counts["evaluated"]}', refresh=False)
                if self.state_dir is not None and time.time() - last_checkpoint >= self.checkpoint_seconds:
                    self.checkpoint()
                    last_checkpoint = time.time()
                if on_batch is not None:
                    on_batch(self)
            self.elapsed = base_elapsed + time.time() - start
            if self.state_dir is not None:
                self.checkpoint()
        finally:
            for bar in bars or []:
                bar.close()
        return self

    def _progress_bars(self):
        from tqdm import tqdm
        width = max(len(s.name) for s in self.searches)
        return [tqdm(total=self.options.per_class, initial=min(s.num_kept, self.options.per_class),
                     desc=f'{s.name:>{width}}', unit='img', position=i, leave=True, disable=None)
                for i, s in enumerate(self.searches)]

    # Results ----------------------------------------------------------------------------------
    def shortfalls(self):
        """Messages for the classes that got fewer than N latents (empty when every class is complete)."""
        opts, out = self.options, []
        conf = f' with confidence >= {opts.min_confidence:g}' if opts.min_confidence > 0 else ''
        hints = ['raise --max-candidates (now %d per class)' % opts.candidate_cap]
        if opts.min_confidence > 0:
            hints.insert(0, f'lower --min-confidence (best seen: {{best:.3f}})')
        if opts.gate != 'none':
            hints.append(f'check --gate={opts.gate} (it rejected {{gated}} of the images)')
        if opts.truncation_psi < 1:
            hints.append(f'raise --trunc toward 1 (psi {opts.truncation_psi:g} narrows the generator to its '
                         f'most common modes)')
        for s in self.searches:
            if s.num_kept >= opts.per_class:
                continue
            tried = s.counts['evaluated']
            hint = '; '.join(hints).format(best=s.best_confidence, gated=s.counts['rejected_gate'])
            if s.num_kept == 0:
                out.append(f'class {s.name!r} (index {s.index}) was never found: {tried} random latents rendered '
                           f'(truncation {opts.truncation_psi:g}), none classified as {s.name!r}{conf} '
                           f'(highest p({s.name}) seen: {s.best_confidence:.3f}). Try: {hint}.')
            else:
                out.append(f'class {s.name!r} (index {s.index}): only {s.num_kept} of {opts.per_class} found after '
                           f'{tried} candidates ({len(s.trees)} tree(s), acceptance {s.num_kept / max(tried, 1):.1%}). '
                           f'Try: {hint}.')
        return out

    def samples(self):
        """Every kept sample, in the order it was kept: dicts with cls, index, latent, image, tree, parent,
        dist, g_label, confidence. Reads checkpoint chunks one at a time, then what is still in memory."""
        for seq in range(self.num_chunks):
            with np.load(self._chunk_path(seq), allow_pickle=False) as chunk:
                arrays = {k: chunk[k] for k in chunk.files}
            for i in range(len(arrays['cls'])):
                yield {k: (v[i] if v.ndim > 1 else v[i].item()) for k, v in arrays.items()}
        yield from self._pending

    def report(self):
        opts = self.options
        classes = []
        for s in self.searches:
            kept = min(s.num_kept, opts.per_class)
            classes.append(dict(name=s.name, index=s.index, kept=kept, candidates=s.counts['evaluated'],
                                acceptance_rate=kept / max(s.counts['evaluated'], 1), trees=len(s.trees),
                                complete=kept >= opts.per_class, **{k: v for k, v in s.counts.items() if k != 'evaluated'},
                                best_root_confidence=s.best_confidence))
        total = sum(c['kept'] for c in classes)
        evaluated = sum(c['candidates'] for c in classes)
        return dict(classes=classes, kept=total, candidates=evaluated, acceptance_rate=total / max(evaluated, 1),
                    seconds=self.elapsed, kept_per_second=total / max(self.elapsed, 1e-9),
                    candidates_per_second=evaluated / max(self.elapsed, 1e-9), steps=self.num_steps,
                    options=dataclasses.asdict(opts), device=str(self.device))

    # Checkpoints ------------------------------------------------------------------------------
    def _chunk_path(self, seq):
        return os.path.join(self.state_dir, f'chunk-{seq:06d}.npz')

    def _fingerprint(self):
        return dict(version=STATE_VERSION, options=self.options.fingerprint(), identity=self.identity,
                    latent_shape=list(self.latent_shape))

    def checkpoint(self):
        """Write the samples kept since the last checkpoint as a new chunk, then the state (atomically)."""
        if self.state_dir is None:
            raise RebalanceError('this search has no state_dir to checkpoint into')
        os.makedirs(self.state_dir, exist_ok=True)
        if self._pending:
            arrays = {key: np.stack([np.asarray(p[key]) for p in self._pending]) for key in self._pending[0]}
            atomic_write(self._chunk_path(self.num_chunks), lambda f: np.savez(f, **arrays))
            self.num_chunks += 1
        meta = dict(self._fingerprint(), num_chunks=self.num_chunks, num_steps=self.num_steps, elapsed=self.elapsed,
                    classes={str(s.index): s.state() for s in self.searches})
        queues = {f'queue_{s.index}': np.array([(j, c) for j, c, _, _ in s.queue], dtype=np.int64).reshape(-1, 2)
                  for s in self.searches}
        atomic_write(os.path.join(self.state_dir, 'state.npz'),
                     lambda f: np.savez(f, meta=np.array(json.dumps(meta)), **queues))
        self._pending = []

    def _load(self):
        with np.load(os.path.join(self.state_dir, 'state.npz'), allow_pickle=False) as state:
            meta = json.loads(str(state['meta']))
            queues = {k: state[k] for k in state.files if k.startswith('queue_')}
        expected = json.loads(json.dumps(self._fingerprint()))
        found = {k: meta.get(k) for k in expected}
        if found != expected:
            diff = _describe_difference(found, expected)
            raise RebalanceError(f'{self.state_dir} holds an unfinished search started with other settings ({diff}). '
                                 f'Rerun with the same settings to continue it, or delete {self.state_dir} to '
                                 f'start over.')
        self.num_chunks, self.num_steps, self.elapsed = meta['num_chunks'], meta['num_steps'], meta['elapsed']
        by_index = {s.index: s for s in self.searches}
        for name in os.listdir(self.state_dir):   # written after the last state, or half-written: crash leftovers
            if (name.startswith('chunk-') and int(name[6:12]) >= self.num_chunks) or name.startswith('.'):
                os.remove(os.path.join(self.state_dir, name))
        for sample in self.samples():
            s = by_index[sample['cls']]
            if sample['index'] != s.num_kept:
                raise RebalanceError(f'{self.state_dir} is inconsistent (class {s.name}: sample {sample["index"]} '
                                     f'after {s.num_kept}); delete it to start over')
            s.kept.append(sample['latent'])
            s.tree.append(sample['tree'])
            s.parent.append(sample['parent'])
            s.dist.append(sample['dist'])
            s.g_label.append(sample['g_label'])
            s.confidence.append(sample['confidence'])
        for s in self.searches:
            st = meta['classes'][str(s.index)]
            if st['num_kept'] != s.num_kept:
                raise RebalanceError(f'{self.state_dir} is inconsistent (class {s.name}: {s.num_kept} samples in '
                                     f'chunks, {st["num_kept"]} in state.npz); delete it to start over')
            s.root_pos, s.best_confidence, s.trees = st['root_pos'], st['best_confidence'], st['trees']
            s.counts.update(st['counts'])
            for j, c in queues[f'queue_{s.index}']:
                j, c = int(j), int(c)
                child = s.kept[j] + self._child_noise(s, j)[c]
                s.queue.append((j, c, child, _distances(child[None], s.kept[s.trees[s.tree[j]][0]])[0]))
        self.log(f'Resuming the search in {self.state_dir}: ' +
                 ', '.join(f'{s.name!r}: {s.num_kept}' for s in self.searches) + ' kept so far')


def _describe_difference(found, expected, prefix=''):
    if isinstance(found, dict) and isinstance(expected, dict):
        parts = [_describe_difference(found.get(k), expected.get(k), f'{prefix}{k}.')
                 for k in sorted(set(found) | set(expected)) if found.get(k) != expected.get(k)]
        return ', '.join(parts)
    return f'{prefix.rstrip(".")}: was {found!r}, now {expected!r}'


# ----------------------------------------------------------------------------------------------
# The dataset

def write_dataset(search, dest, overwrite=False, extra_json=None):
    """Write the kept samples as a training dataset (zip or folder) in dataset_tool's layout.

    Images at dataset_tool's names; dataset.json: "labels" = the classifier's class index of each
    image, "class_names", and "rebalance" (options, the name of the latents file). `latents.npz`
    holds, in image order: latents [n, ...] (z or w+), classes, g_labels (-1: none), trees, parents
    (index within the class, -1 for a root), root_dist, confidence, and the space/truncation/noise
    mode used to render them. At most N samples per class are written. Returns the image count.
    """
    from .cli.dataset_tool import _Writer, archive_name, encode_png
    import PIL.Image
    opts = search.options
    columns = collections.defaultdict(list)
    labels = []
    writer = _Writer(dest, overwrite)
    try:
        idx = 0
        for sample in search.samples():
            if sample['index'] >= opts.per_class:
                continue
            image = np.asarray(sample['image']).transpose(1, 2, 0)
            image = PIL.Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
            name = archive_name(idx)
            writer.write(name, encode_png(image))
            labels.append([name, int(sample['cls'])])
            for key in ('latent', 'cls', 'g_label', 'tree', 'parent', 'dist', 'confidence'):
                columns[key].append(sample[key])
            idx += 1
        latents = dict(latents=np.stack(columns['latent']).astype(np.float32) if idx else np.zeros((0,) + search.latent_shape, np.float32),
                       classes=np.array(columns['cls'], np.int64), g_labels=np.array(columns['g_label'], np.int64),
                       trees=np.array(columns['tree'], np.int64), parents=np.array(columns['parent'], np.int64),
                       root_dist=np.array(columns['dist'], np.float64),
                       confidence=np.array(columns['confidence'], np.float32), space=np.array(opts.space),
                       truncation_psi=np.array(opts.truncation_psi), noise_mode=np.array(opts.noise_mode))
        buffer = io.BytesIO()
        np.savez(buffer, **latents)
        writer.write(LATENTS_FILE, buffer.getvalue())
        meta = dict(labels=labels, class_names=list(search.classifier.class_names),
                    rebalance=dict(latents=LATENTS_FILE, **dataclasses.asdict(opts), **(extra_json or {})))
        writer.write('dataset.json', json.dumps(meta).encode('utf-8'))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return idx


def report_path(dest):
    """The JSON report beside a dataset: balanced.zip -> balanced-report.json."""
    dest = os.path.abspath(dest).rstrip('/\\')
    root = dest[:-4] if dest.lower().endswith('.zip') else dest
    return root + '-report.json'


def state_dir_for(dest):
    return os.path.abspath(dest).rstrip('/\\') + '.partial'


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def load_generator(network_pkl, device='cpu'):
    """G_ema (or G) of an official or stylegan2-fair pickle, in eval mode on `device`."""
    from . import load_network_pkl
    if not os.path.isfile(network_pkl):
        raise RebalanceError(f'--network={network_pkl}: no such file')
    data = load_network_pkl(network_pkl)
    G = data.get('G_ema') if data.get('G_ema') is not None else data.get('G')
    if G is None:
        raise RebalanceError(f'{network_pkl} holds no generator (G_ema or G)')
    return G.eval().requires_grad_(False).to(device)


def rebalance(network_pkl, classifier, dest, per_class, device='cpu', overwrite=False, allow_missing=False,
              progress=True, checkpoint_seconds=30.0, keep_state=False, on_batch=None, log=print, **search_kwargs):
    """Search a balanced dataset out of `network_pkl` and write it to `dest` (zip or folder) with a
    JSON report beside it (`report_path(dest)`). Resumes an interrupted run of the same settings
    from `state_dir_for(dest)`. Classes short of N: RebalanceError (nothing written) unless
    `allow_missing`. `search_kwargs` are SearchOptions fields. Returns the report dict.
    """
    from .classifiers import create_classifier
    dest = os.path.abspath(dest)
    if os.path.exists(dest) and not overwrite:
        raise RebalanceError(f'{dest} already exists; pass --overwrite to replace it, or choose another --outdir')
    if not os.path.isdir(os.path.dirname(dest)):
        raise RebalanceError(f'folder {os.path.dirname(dest)} does not exist; create it first')
    G = load_generator(network_pkl, device)
    try:
        clf = create_classifier(classifier, device=device, img_resolution=G.img_resolution)
    except (ValueError, FileNotFoundError) as err:
        raise RebalanceError(f'--classifier={classifier}: {err}') from err
    # Files are identified by content, so a rerun may spell their paths differently.
    scheme, _, path = str(classifier).partition(':')
    identity = dict(network_sha256=file_sha256(network_pkl),
                    classifier=f'{scheme}:sha256={file_sha256(path)}' if os.path.isfile(path) else str(classifier))
    options = SearchOptions(per_class=per_class, **search_kwargs)
    state_dir = state_dir_for(dest)
    search = RebalanceSearch(G, clf, options, device=device, state_dir=state_dir,
                             checkpoint_seconds=checkpoint_seconds, identity=identity, log=log)
    search.run(progress=progress, on_batch=on_batch)
    report = search.report()
    report.update(network=os.path.abspath(network_pkl), classifier=str(classifier), dest=dest, g_c_dim=int(G.c_dim),
                  class_names=list(clf.class_names), shortfalls=search.shortfalls())
    if report['shortfalls'] and not allow_missing:
        raise RebalanceError('the search fell short, so nothing was written (the search state is kept in '
                             f'{state_dir}: rerunning continues it):\n  ' + '\n  '.join(report['shortfalls']) +
                             '\n  Or pass --allow-missing to write the classes that were found.')
    report['images'] = write_dataset(search, dest, overwrite=overwrite,
                                     extra_json=dict(network=report['network'], classifier=report['classifier']))
    atomic_write_text(report_path(dest), json.dumps(report, indent=2))
    if not keep_state:
        shutil.rmtree(state_dir, ignore_errors=True)
    return report


def retrofit_commands(network_pkl, dest, classifier, conditional=False, freezed=5, outdir='runs'):
    """The train.py commands that use the balanced data (the paper's Table 1/4 variants)."""
    cond = ' --cond=1' if conditional else ''
    common = f'--data={dest} --fair-method=fairness --classifier={classifier}{cond}'
    finetune = f'python train.py --outdir={outdir} --resume={network_pkl} --resume-arch=1 {common} --lr-scale=0.1'
    return dict(finetune=finetune, finetune_freezed=f'{finetune} --freezed={freezed}',
                retrain=f'python train.py --outdir={outdir} {common} --cfg=auto')
