"""What one benchmark run measures and for how long: the quick plan (under a minute, used by
the test) and the full plan (`make bench`), plus the TorchServe variants the tuning compares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serving.bench.instance import Variant
from serving.server import LOG_CONFIG_PATH


@dataclass(frozen=True)
class Plan:
    """Sizes and time bounds of every measurement in a run.

    The warm-ups matter: the JVM's JIT needs tens of seconds of load before TorchServe's
    frontend reaches its steady cost (measured: about 1 ms of CPU per request after 3 s of
    warm-up, under 0.5 ms after 40 s), and a server runs far longer than a benchmark.
    """

    quick: bool
    drawings: int
    main_concurrency: tuple[int, ...]
    main_seconds: float
    sweep: tuple[int, ...]
    sweep_seconds: float
    tuning_seconds: float
    max_requests: int
    in_process_calls: int
    in_process_seconds: float
    loadgen_seconds: float
    warmup_seconds: float
    tuning_warmup_seconds: float
    measure_keep_alive_off: bool


QUICK = Plan(
    quick=True,
    drawings=32,
    main_concurrency=(1, 32),
    main_seconds=1.5,
    sweep=(),
    sweep_seconds=0.0,
    tuning_seconds=0.0,
    max_requests=5_000,
    in_process_calls=200,
    in_process_seconds=1.5,
    loadgen_seconds=1.0,
    warmup_seconds=1.0,
    tuning_warmup_seconds=0.0,
    measure_keep_alive_off=False,
)

FULL = Plan(
    quick=False,
    drawings=256,
    main_concurrency=(1, 32),
    main_seconds=8.0,
    sweep=(1, 4, 8, 16, 32, 64),
    sweep_seconds=3.0,
    tuning_seconds=3.0,
    max_requests=50_000,
    in_process_calls=3_000,
    in_process_seconds=5.0,
    loadgen_seconds=3.0,
    warmup_seconds=30.0,
    tuning_warmup_seconds=15.0,
    measure_keep_alive_off=True,
)

SHIPPED = Variant(
    "shipped", "config.properties and handler/model-config.yaml exactly as in the repository"
)
SHIPPED_UNBATCHED = Variant(
    "shipped-unbatched",
    "shipped, but batchSize 1: the reference for what batching costs a lone request",
    model_config={"batchSize": 1, "maxBatchDelay": 0},
)

# On 2 cores the JVM's common ForkJoin pool has parallelism 1, and CompletableFuture.runAsync
# then starts a new thread per task: TorchServe's WorkerThread does that once per batch
# (seen with Flight Recorder: one "Thread-N" started per request at concurrency 1).
FORK_JOIN = "-Djava.util.concurrent.ForkJoinPool.common.parallelism=4"
# On 2 cores the C2 compiler threads and G1's concurrent threads compete with the workers;
# the serial collector and the quick C1 compiler cost less CPU per request here.
SERIAL_C1 = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1"

# The configuration the measurements point to (and the repository ships); every tuning row
# changes one thing from it.
CANDIDATE_MODEL = {
    "minWorkers": 2,
    "maxWorkers": 2,
    "batchSize": 8,
    "maxBatchDelay": 1,
    "handler": {"torch_threads": 1},
}
CANDIDATE_PROPERTIES = {"vmargs": f"{FORK_JOIN} {SERIAL_C1}"}
CANDIDATE = "candidate"
# The candidate once more at the end of the tuning rows. Other tenants of a shared machine
# change its speed over minutes; a row differing from the candidate by less than the two
# candidate rows differ from each other shows no effect of its own.
DRIFT_CHECK = "candidate-last"


def _candidate(
    name: str,
    description: str,
    model: dict[str, Any] | None = None,
    properties: dict[str, str] | None = None,
    builtin_logs: bool = False,
) -> Variant:
    return Variant(
        name,
        description,
        properties={**CANDIDATE_PROPERTIES, **(properties or {})},
        model_config={**CANDIDATE_MODEL, **(model or {})},
        log_config=None if builtin_logs else LOG_CONFIG_PATH,
    )


def tuning_variants() -> list[Variant]:
    """One TorchServe each: the candidate, then the candidate with one thing changed."""
    return [
        _candidate(
            CANDIDATE,
            "as shipped: 2 workers x 1 thread, batch <= 8 waiting <= 1 ms, 2+2 Netty threads, "
            "JVM options, the project's log4j2.xml",
        ),
        _candidate("1-worker", "candidate with 1 worker", {"minWorkers": 1, "maxWorkers": 1}),
        _candidate("unbatched", "candidate with batchSize 1", {"batchSize": 1, "maxBatchDelay": 0}),
        _candidate(
            "delay-0",
            "candidate with maxBatchDelay 0, which TorchServe 0.12 replaces by its default 100 ms",
            {"maxBatchDelay": 0},
        ),
        _candidate("delay-5", "candidate with maxBatchDelay 5", {"maxBatchDelay": 5}),
        _candidate(
            "batch-4-delay-50",
            "candidate with batch 4 and 50 ms delay (the untuned example)",
            {"batchSize": 4, "maxBatchDelay": 50},
        ),
        _candidate(
            "2-threads", "candidate with 2 torch threads", {"handler": {"torch_threads": 2}}
        ),
        _candidate(
            "no-fj-fix",
            "candidate without the ForkJoin JVM option",
            properties={"vmargs": SERIAL_C1},
        ),
        _candidate(
            "g1-c2",
            "candidate with the JVM's default G1 collector and C2 compiler",
            properties={"vmargs": FORK_JOIN},
        ),
        _candidate(
            "parallel-gc",
            "candidate with -XX:+UseParallelGC and the C2 compiler",
            properties={"vmargs": f"{FORK_JOIN} -XX:+UseParallelGC"},
        ),
        _candidate(
            "builtin-logs",
            "candidate with TorchServe's built-in log4j2.xml instead of the project's",
            builtin_logs=True,
        ),
        _candidate(
            "netty-1",
            "candidate with 1 Netty server thread and 1 worker-IPC thread",
            properties={"number_of_netty_threads": "1", "netty_client_threads": "1"},
        ),
        _candidate(
            "netty-4",
            "candidate with 4 Netty server threads and 4 worker-IPC threads",
            properties={"number_of_netty_threads": "4", "netty_client_threads": "4"},
        ),
        _candidate(
            "async-logging",
            "candidate with async_logging=true and disable_system_metrics=true",
            properties={"async_logging": "true", "disable_system_metrics": "true"},
        ),
        _candidate(
            DRIFT_CHECK,
            "the candidate again, measured last: how far the machine's own speed drifted "
            "while the rows above were measured",
        ),
    ]
