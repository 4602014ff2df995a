"""Beam's DaskRunner with the translation faults that stop beam-v1's pipelines fixed.

`apache_beam.runners.dask.dask_runner.DaskRunner` (Beam 2.77) turns each Beam primitive into
a `dask.bag` operation. Five of its translations are wrong for ordinary Beam pipelines
(`tests/test_dask.py` shows each on a pure-Beam pipeline):

1. `Impulse` has no translation: it becomes the identity of its input, `None`, so the first
   ParDo after it fails with `AttributeError: 'NoneType' object has no attribute 'map'`.
2. A ParDo's outputs are one bag: every consumer of any tagged output (`with_outputs`) gets
   the elements of *all* outputs, untagged (a side input `AsList(result.failed)` sees the
   main output's elements: `TypeError: 'VariableRecord' object is not subscriptable`).
3. Only the bag of the last transform visited is computed ("connected to the full Bag Task
   Graph", which is false for a pipeline with two sinks): other branches never run.
4. What a DoFn outputs in `finish_bundle` is dropped (the outputs are taken before it runs).
5. A side input is a bag computed again inside every task that reads it (its whole upstream
   runs once more).
Also `Reshuffle` is the identity there, so one partition stays one task.

`DaskRunner` here keeps Beam's translations of Create, GroupByKey and Flatten and Beam's
DoFn invoker, and fixes those: Impulse is a one-element bag; ParDos are fused into stages
(below), where each element goes, with its output tag, to the steps that read that output,
`finish_bundle`'s outputs included; a stage is computed once whatever reads it, and every
stage is computed (as a count, so no data goes back to the client); a side input is a
dependency of the tasks that read it (computed once); Reshuffle deals its elements
round-robin into as many partitions as the cluster has worker threads (or
`--dask_npartitions`). `PipelineResult.metrics()` is not implemented by Beam's DaskRunner
(it raises NotImplementedError): callers must count what the run wrote instead.

Stages, as Beam's own runners fuse: a chain of ParDos (and Flattens of one stage's outputs)
runs as one task per partition, each element streamed through the steps in memory, and only
what is read outside the stage is collected. Each task unpickles DoFn instances of its own
(tasks on threads of one worker must not share one), sets them up, runs one bundle and tears
them down. A ParDo that reads side inputs starts a stage. Partition i of every stage is
placed on worker thread i (dask's `workers` annotation, other workers allowed), so the
partitions a Reshuffle deals out run on different workers next to their data. (Beam's
translation materialized every step's output as a list, one task per step, and dask placed
every task where its input was: all partitions after a Reshuffle of one partition ran on one
worker, and whole partitions crossed between workers: benchmarks/RESULTS.md, "Run E".)

Use it as `--runner beam_v1.dask_compat.DaskRunner` (the `beam-v1` CLI maps `DaskRunner` and
Beam's class path to it: `beam_v1.cli.main.runner_alias`) with `--dask_client_address tcp://HOST:PORT`.
"""

from __future__ import annotations

import collections
import dataclasses
import typing as t

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.internal import pickler
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import Receiver
from apache_beam.runners.dask import dask_runner, overrides, transform_evaluator
from apache_beam.runners.runner import PipelineResult
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.utils.windowed_value import WindowedValue


@dataclasses.dataclass
class _Step:
    """One ParDo of a stage, as a worker runs it. PCollections are numbered within the stage."""

    label: str
    fn: bytes  # the DoFn, pickled by Beam: each task unpickles an instance of its own
    args: list
    kwargs: dict
    window_fn: t.Any  # of the main input: what the DoFn's outputs are windowed by
    main_input: int
    outputs: dict[str | None, int]  # tag (None: main) -> PCollection
    side_inputs: list[tuple[t.Any, t.Any, t.Any, int]]  # (view, options, mapping, value index)


@dataclasses.dataclass
class _StageSpec:
    """ParDos (and Flattens) fused into one task per partition: the stage's input elements
    go through every step in memory, one element at a time; only `exports` (PCollections
    read outside the stage) are collected, one list each."""

    input_id: int
    input_window_fn: t.Any
    steps: list[_Step]
    flattens: list[tuple[list[int], int]]  # (inputs, output)
    exports: list[int]


class _Fanout(Receiver):
    """Passes each element to every receiver of a PCollection (none: dropped)."""

    def __init__(self, receivers: list):
        self.receivers = receivers

    def receive(self, windowed_value: WindowedValue):
        for receiver in self.receivers:
            receiver.receive(windowed_value)


class _Collect(Receiver):
    """Collects the values (windows dropped, as Beam's Dask translations keep them)."""

    def __init__(self, values: list):
        self.values = values

    def receive(self, windowed_value: WindowedValue):
        self.values.append(windowed_value.value)


class _Process(Receiver):
    """Feeds a DoFn."""

    def __init__(self, invoker):
        self.invoker = invoker

    def receive(self, windowed_value: WindowedValue):
        self.invoker.invoke_process(windowed_value)


class _Tagged(dict):
    """Tagged receivers of a step; a tag no transform reads is dropped."""

    def __missing__(self, tag):
        return _Fanout([])


def _invoker(step: _Step, receivers: dict[int, list], side_values: tuple):
    from apache_beam import DoFn
    from apache_beam.runners.common import (
        DoFnContext,
        DoFnInvoker,
        DoFnSignature,
        _OutputHandler,
    )

    side_inputs = [
        SideInputMap(view, options,
                     transform_evaluator.DaskBagWindowedIterator(side_values[i], mapping))
        for view, options, mapping, i in step.side_inputs
    ]
    main = step.outputs.get(None)
    handler = _OutputHandler(
        window_fn=step.window_fn,
        main_receivers=_Fanout(receivers[main] if main is not None else []),
        tagged_receivers=_Tagged(
            {tag: _Fanout(receivers[p]) for tag, p in step.outputs.items() if tag is not None}
        ),
        per_element_output_counter=None,
        output_batch_converter=None,
        process_yields_batches=False,
        process_batch_yields_elements=False,
    )
    return DoFnInvoker.create_invoker(
        DoFnSignature(pickler.loads(step.fn)), handler,
        context=DoFnContext(step.label, state=None),
        side_inputs=side_inputs or None,
        input_args=list(step.args),
        input_kwargs=step.kwargs,
        user_state_context=None,
        bundle_finalizer_param=DoFn.BundleFinalizerParam(),
    )


def _run_stage(items, spec: _StageSpec, *side_values) -> list[list]:
    """Run a stage over one partition (one bundle per DoFn); returns the exports' values, in
    the order of `spec.exports`. Side inputs arrive computed, as lists."""
    receivers: dict[int, list] = collections.defaultdict(list)
    exported: list[list] = []
    for p in spec.exports:
        exported.append([])
        receivers[p].append(_Collect(exported[-1]))
    for inputs, output in spec.flattens:
        for p in inputs:
            receivers[p].append(_Fanout(receivers[output]))
    invokers = []
    for step in spec.steps:
        invoker = _invoker(step, receivers, side_values)
        receivers[step.main_input].append(_Process(invoker))
        invokers.append(invoker)
    for invoker in invokers:
        invoker.invoke_setup()
    try:
        for invoker in invokers:
            invoker.invoke_start_bundle()
        entry = _Fanout(receivers[spec.input_id])
        for item in items:
            entry.receive(transform_evaluator.get_windowed_value(item, spec.input_window_fn))
        for invoker in invokers:  # upstream first: its finish_bundle outputs go downstream
            invoker.invoke_finish_bundle()
    finally:
        for invoker in invokers:
            invoker.invoke_teardown()
    return exported


def _pick(exported: list[list], index: int) -> list:
    return exported[index]


def _count(items) -> list[int]:
    return [sum(1 for _ in items)]


def _flatten(parts) -> list:
    return [x for part in parts for x in part]


def _deal(items, count: int, first: int) -> list[list]:
    """Elements dealt in turn into `count` lists, from list `first` on."""
    hands: list[list] = [[] for _ in range(count)]
    for i, item in enumerate(items):
        hands[(first + i) % count].append(item)
    return hands


def _gather(dealt: list[list[list]], index: int) -> list:
    return [x for hands in dealt for x in hands[index]]


@dataclasses.dataclass(frozen=True)
class _Placement:
    """Worker of a partition's task: partition i -> `slots[i % len(slots)]` (it is pickled
    with the graph, so it holds nothing else)."""

    slots: tuple[str, ...]

    def __call__(self, key) -> list[str] | None:
        if isinstance(key, tuple) and len(key) > 1 and isinstance(key[1], int) and self.slots:
            return [self.slots[key[1] % len(self.slots)]]
        return None


def reshuffle(bag, partitions: int, placement: _Placement | None = None):
    """Every element dealt round-robin into `partitions` partitions: each output partition
    takes its share of every input partition (dask's `repartition` only splits or joins
    partitions where they are, so one input partition stayed on one worker). With
    `placement`, output partition j is gathered on its worker."""
    import contextlib
    import uuid

    import dask
    import dask.bag as db

    count = max(partitions, 1)
    parts = bag.to_delayed(optimize_graph=False)
    dealt = [dask.delayed(_deal)(part, count, i) for i, part in enumerate(parts)]
    name = f"reshuffle-{uuid.uuid4().hex}"
    placed = (dask.annotate(workers=placement, allow_other_workers=True) if placement
              else contextlib.nullcontext())
    with placed:
        return db.from_delayed(
            [dask.delayed(_gather)(dealt, j, dask_key_name=(name, j)) for j in range(count)]
        )


def _is_pardo(node: AppliedPTransform) -> bool:
    return transform_evaluator.TRANSLATIONS.get(node.transform.__class__) is (
        transform_evaluator.ParDo
    )


def _is_flatten(node: AppliedPTransform) -> bool:
    return transform_evaluator.TRANSLATIONS.get(node.transform.__class__) is (
        transform_evaluator.Flatten
    )


class _Stage:
    """A stage being planned: its input PCollection, its nodes, and the PCollections it makes."""

    def __init__(self, input_pcoll: pvalue.PCollection):
        self.input = input_pcoll
        self.nodes: list[AppliedPTransform] = []
        self.made: list[pvalue.PCollection] = []
        self.exports: list[pvalue.PCollection] = []

    def spec(self, side_index: dict) -> _StageSpec:
        ids = {pcoll: i for i, pcoll in enumerate([self.input, *self.made])}
        steps, flattens = [], []
        for node in self.nodes:
            if _is_flatten(node):
                flattens.append(([ids[p] for p in node.inputs],
                                 ids[next(iter(node.outputs.values()))]))
                continue
            transform = t.cast(beam.ParDo, node.transform)
            args, kwargs = transform.raw_side_inputs
            main = next(iter(node.main_inputs.values()))
            steps.append(_Step(
                label=transform.label, fn=pickler.dumps(transform.fn), args=list(args),
                kwargs=kwargs,
                window_fn=_window_fn(main), main_input=ids[main],
                outputs={tag: ids[p] for tag, p in node.outputs.items()},
                side_inputs=[(type(si), si._view_options(), si._window_mapping_fn,
                              side_index[si.pvalue]) for si in node.side_inputs],
            ))
        return _StageSpec(ids[self.input], _window_fn(self.input), steps, flattens,
                          [ids[p] for p in self.exports])


def _window_fn(pcoll):
    return getattr(getattr(pcoll, "windowing", None), "windowfn", None)


class _Visitor(PipelineVisitor):
    """Collects the leaf transforms in topological order."""

    def __init__(self):
        self.nodes: list[AppliedPTransform] = []

    def visit_transform(self, node: AppliedPTransform) -> None:
        self.nodes.append(node)


class _Translation:
    """A pipeline's leaf transforms -> dask bags.

    ParDos are fused into stages (one task per partition, elements streamed through the
    steps in memory, as Beam's own runners fuse them): a ParDo joins the stage that makes its
    main input unless it reads side inputs (it starts one: its side inputs may come from
    the stage); a Flatten of PCollections of one stage is part of it. Stage tasks of
    partition i are placed on worker i (round-robin, others allowed), so the partitions a
    Reshuffle deals out run on different workers with their data where they run.
    """

    def __init__(self, nodes: list[AppliedPTransform], bag_kwargs: dict, workers: list[str]):
        self.bag_kwargs = bag_kwargs
        self.workers = tuple(workers)
        self.partitions = bag_kwargs.get("npartitions") or max(len(workers), 1)
        self.bags: dict[pvalue.PCollection, t.Any] = {}
        self.stage_bags: list[tuple[_Stage, t.Any]] = []
        self.stages = self._plan(nodes)
        for node in nodes:
            self._translate(node)

    def _plan(self, nodes) -> dict[AppliedPTransform, _Stage]:
        stage_of: dict[AppliedPTransform, _Stage] = {}
        made_in: dict[pvalue.PCollection, _Stage] = {}
        for node in nodes:
            stage = None
            if _is_pardo(node):
                main = next(iter(node.main_inputs.values()))
                stage = made_in.get(main) if not node.side_inputs else None
                stage = stage or _Stage(main)
            elif _is_flatten(node):
                found = {made_in.get(p) for p in node.inputs}
                stage = found.pop() if len(found) == 1 else None
            if stage is None:
                continue
            stage.nodes.append(node)
            stage_of[node] = stage
            for pcoll in node.outputs.values():
                made_in[pcoll] = stage
                stage.made.append(pcoll)
        readers: dict[pvalue.PCollection, set] = collections.defaultdict(set)
        for node in nodes:
            main = set(node.main_inputs.values()) if _is_pardo(node) else set(node.inputs)
            for pcoll in main:
                readers[pcoll].add(stage_of.get(node, node))
            for si in node.side_inputs:
                readers[si.pvalue].add(node)  # a side input is always read as a bag
        for pcoll, stage in made_in.items():
            if readers[pcoll] - {stage}:
                stage.exports.append(pcoll)
        self.unread = [p for node in nodes for p in node.outputs.values() if not readers[p]]
        return stage_of

    def _translate(self, node: AppliedPTransform) -> None:
        import dask
        import dask.bag as db

        stage = self.stages.get(node)
        if stage is not None:
            if node is stage.nodes[0]:
                self._stage_bags(stage, dask)
            return
        transform = node.transform
        inputs = [self.bags[v] for v in node.inputs if not isinstance(v, pvalue.PBegin)]
        op_class = transform_evaluator.TRANSLATIONS.get(transform.__class__)
        if isinstance(transform, beam.Impulse):
            bag = db.from_sequence([b""], npartitions=1)
        elif isinstance(transform, overrides._Reshuffle):
            bag = reshuffle(inputs[0], self.partitions, _Placement(self.workers))
        elif op_class is not None:
            op = op_class(node, bag_kwargs=self.bag_kwargs)
            bag = op.apply(inputs if op_class is transform_evaluator.Flatten
                           else inputs[0] if inputs else None)
        else:  # composites' leftovers Beam's runner also passes through (e.g. _Read: none here)
            if not inputs:
                raise NotImplementedError(
                    f"The DaskRunner cannot run {node.full_label} "
                    f"({type(transform).__name__}): Beam has no Dask translation for it."
                )
            bag = inputs[0]
        for pcoll in node.outputs.values():
            self.bags[pcoll] = bag

    def _stage_bags(self, stage: _Stage, dask) -> None:
        sides = [si.pvalue for node in stage.nodes for si in node.side_inputs]
        # unoptimized: an optimized graph gives each reader its own copy of everything upstream
        side_values = [
            dask.delayed(_flatten)(self.bags[p].to_delayed(optimize_graph=False)) for p in sides
        ]
        spec = stage.spec({p: i for i, p in enumerate(sides)})
        with dask.annotate(workers=_Placement(self.workers), allow_other_workers=True):
            bag = self.bags[stage.input].map_partitions(_run_stage, spec, *side_values)
        self.stage_bags.append((stage, bag))
        for i, pcoll in enumerate(stage.exports):
            self.bags[pcoll] = bag.map_partitions(_pick, i)

    def leaves(self) -> list:
        """What to compute: every stage (each once, whatever reads it) and every PCollection
        no transform reads that no stage makes."""
        made = {p for stage, _ in self.stage_bags for p in stage.made}
        return [bag for _, bag in self.stage_bags] + [
            self.bags[p] for p in self.unread if p not in made
        ]


class DaskRunner(dask_runner.DaskRunner):
    """Beam's DaskRunner with Impulse, tagged outputs, branches, side inputs and Reshuffle
    translated right, and ParDos fused into stages (see the module docstring)."""

    def run_pipeline(self, pipeline, options) -> PipelineResult:
        import dask.distributed as ddist

        dask_options = options.view_as(dask_runner.DaskOptions).get_all_options(
            drop_default=True, current_only=True
        )
        bag_kwargs = dask_runner.DaskOptions._extract_bag_kwargs(dask_options)
        client = ddist.Client(**dask_options)
        # one slot per worker thread: partition i of a stage runs on slot i
        slots = [w for w, n in sorted(client.nthreads().items()) for _ in range(n)]
        pipeline.replace_all(overrides.dask_overrides())
        visitor = _Visitor()
        pipeline.visit(visitor)
        translation = _Translation(visitor.nodes, bag_kwargs, slots)
        # each leaf reduced to its element count, so no data travels back to the client
        leaves = [bag.map_partitions(_count) for bag in translation.leaves()]
        # one unoptimized graph for all leaves: optimizing fuses away the placement, and
        # optimizing leaves apart gave each its own copy of the shared steps
        futures = client.compute(leaves, optimize_graph=False)
        return dask_runner.DaskRunnerResult(client, futures)
