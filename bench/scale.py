"""Scale benchmark: thousands of tasks in flight on the real control plane, pods on a simulated
node (kwok, `make scale-up`). Prints tables; with --write it also rewrites the scale section of
docs/benchmarks.md and its plot, docs/benchmarks-scale.png.

    make bench-scale                      # 1,000, 5,000 and 10,000 tasks (about 20 minutes)
    python bench/scale.py [--write] [N ...]

For each N, in one run:
1. raw ceilings: this harness creates min(N, RAW_JOBS) of the same Jobs straight through the API
   from 8 threads, suspended (nothing runs: the API server alone) and running (their pods on the
   kwok node) — what this control plane takes at most, measured next to the dispatcher's rate.
2. a worker with default settings (except: pods go to the kwok node, MAX_ACTIVE_JOBS=0) takes N
   tasks from its queue; every pod "runs" until one common time (the task's env KWOK_FINISH_AT),
   so all N are in flight at once. Measured: the Job-create rate (from a watch of the Jobs), the
   worker's RSS idle and with N in flight (KB per Job), its connections to the API server.
   (The harness's own watch of the Jobs stops before step 4, so that it takes no CPU then.)
3. restart with N in flight: that worker is stopped (SIGTERM) and a new one started: the time
   until /readyz answers 200, and its peak RSS meanwhile.
4. that worker is stopped too; all N pods finish while no worker runs; a third worker starts and
   answers every ended Job: the finalize rate (answers per second from its start).
5. every answer is checked (N distinct ids, exit 0, output "done"); lost and duplicates counted.
   Kubernetes requests per task: the three workers' dispatcher_kube_api_request_seconds_count,
   every verb but watch (the watches' lists included), divided by N.
6. where finalize's time goes: CPU milliseconds per answer of the worker and of each stack
   process (from /proc, by the PIDs the stack recorded), the machine's idle share, and the API
   server's mean answer time per verb as the third worker saw it. "harness" is this process
   (collecting the answers), "other" the rest of the machine (scheduler, kubelet, kernel).

Bounded: every wait has a deadline; the installation's Jobs are deleted after each N.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import matplotlib as mpl
from bench.report import markdown_table, rss_kib
from harness.burst import JobMonitor
from harness.stack import (
    LOCAL,
    Broker,
    Instance,
    ResponseCollector,
    Worker,
    kubectl,
    stack_env,
)

from dispatcher.config import Settings
from dispatcher.kube.client import KubeClient
from dispatcher.kube.conventions import ANSWER_FINALIZER, label_selector
from dispatcher.kube.jobspec import build_job
from dispatcher.messages.route import ReplyRoute
from dispatcher.messages.task import Task

mpl.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = LOCAL / "logs" / "bench-scale"
DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "benchmarks-scale.png"
BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"
SIZES = (1000, 5000, 10000)
RAW_JOBS = 2000
RAW_THREADS = 8
KWOK = {"JOB_NODE_SELECTOR": "type=kwok", "JOB_TOLERATIONS": "kwok.x-k8s.io/node=fake:NoSchedule"}
EXPECTED_RATE = 60.0  # Jobs per second assumed when choosing the common finish time
MARGIN_SECONDS = 90.0  # and the time after that for the measurements and the restart
API_PORT_HEX = f"{6443:04X}"
STACK_PIDS = Path("/run/dispatcher-stack/pids")
STACK_PROCESSES = ("kube-apiserver", "etcd", "kube-controller-manager", "kwok", "rabbitmq")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    n: int
    raw_rate: float = 0.0
    raw_running_rate: float = 0.0
    create_rate: float = 0.0
    idle_mib: float = 0.0
    peak_mib: float = 0.0  # with N in flight
    kb_per_job: float = 0.0
    connections: int = 0
    requests: Counter[str] = field(default_factory=Counter)
    restart_ready_s: float = 0.0
    restart_peak_mib: float = 0.0
    finalize_rate: float = 0.0  # answers per second, first answer to last
    first_answer_s: float = 0.0  # from the worker's start
    all_answered_s: float = 0.0  # from the worker's start
    finalize_ready_s: float = 0.0
    finalize_peak_mib: float = 0.0
    finalize_cpu_ms: dict[str, float] = field(default_factory=dict)  # per answer, by process
    finalize_idle: float = 0.0  # share of the machine's CPU time left idle while finalizing
    finalize_answer_ms: dict[str, float] = field(default_factory=dict)  # API mean, by verb
    answered: int = 0
    lost: int = 0
    duplicates: int = 0
    wrong: int = 0
    created_curve: list[tuple[float, int]] = field(default_factory=list)
    answered_curve: list[tuple[float, int]] = field(default_factory=list)
    rss_curve: list[tuple[float, float]] = field(default_factory=list)

    @property
    def requests_per_task(self) -> float:
        return sum(self.requests.values()) / self.n


# -- measuring a worker process ---------------------------------------------------------------


def rss_mib(pid: int) -> float:
    return rss_kib(pid) / 1024


def api_connections(pid: int) -> int:
    """Established TCP connections of `pid` to the API server's port."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            remote, state, inode = parts[2], parts[3], parts[9]
            if inode in inodes and state == "01" and remote.endswith(":" + API_PORT_HEX):
                count += 1
    return count


class RssSampler:
    """Samples the RSS of whichever worker runs now, every 0.2 s, into one curve."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.pid: int | None = None
        self.curve: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            if self.pid is not None and (mib := rss_mib(self.pid)):
                self.curve.append((time.monotonic() - self.start, mib))

    def peak_since(self, since: float) -> float:
        return max((m for t, m in self.curve if t >= since - self.start), default=0.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status, reply.read().decode()
    except OSError as exc:
        return getattr(exc, "code", 0) or 0, ""


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Seconds from now until /readyz answers 200."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        if get(f"http://127.0.0.1:{port}/readyz")[0] == 200:
            return time.monotonic() - start
        time.sleep(0.05)
    raise RuntimeError(f"worker not ready after {timeout:g} s")


def kube_requests(port: int, part: str = "count") -> Counter[str]:
    """The worker's Kubernetes requests so far by verb, without the watches (`part` "sum": the
    seconds they took)."""
    _, text = get(f"http://127.0.0.1:{port}/metrics")
    counted: Counter[str] = Counter()
    metric = f"dispatcher_kube_api_request_seconds_{part}"
    pattern = rf'^{metric}\{{resource="[^"]*",verb="([^"]*)"\}} (\S+)'
    for verb, value in re.findall(pattern, text, re.MULTILINE):
        if verb != "watch":
            counted[verb] += float(value)
    return counted


def stop(worker: Worker, port: int, row: Row) -> None:
    """Stop a worker by its PID (SIGTERM), adding its Kubernetes requests to the row first."""
    row.requests += Counter({v: round(c) for v, c in kube_requests(port).items()})
    worker.stop()


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by a process and the processes it started (that still run)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return own + sum(cpu_seconds(int(child)) for child in children)


def cpu_snapshot(worker_pid: int | None) -> dict[str, float]:
    """CPU seconds so far of the worker (0 before it starts), each stack process, this process,
    and the whole machine: busy in processes not named ("other"), idle, all."""
    seen = {"worker": cpu_seconds(worker_pid) if worker_pid is not None else 0.0}
    for name in STACK_PROCESSES:
        pid_file = STACK_PIDS / f"{name}.pid"
        seen[name] = cpu_seconds(int(pid_file.read_text())) if pid_file.exists() else 0.0
    own = os.times()
    seen["harness"] = own.user + own.system  # this process: collector, sampler (not the worker)
    cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    seen["idle"], seen["all"] = int(cpu[3]) / CLOCK_TICKS, sum(map(int, cpu)) / CLOCK_TICKS
    busy = seen["all"] - seen["idle"]
    seen["other"] = busy - sum(v for k, v in seen.items() if k not in ("idle", "all"))
    return seen


# -- the raw ceiling ---------------------------------------------------------------------------


def raw_ceiling(count: int, *, running: bool) -> float:
    """Jobs per second this harness creates directly from RAW_THREADS threads (no finalizer).
    Suspended, nothing runs: the API server alone. Running: the same Jobs, their pods on the
    kwok node (done after 1 s), so the control plane does for each what it does for a task."""
    name = "raw" + uuid.uuid4().hex[:6]
    env = {**stack_env(), **KWOK, "JOB_NAMESPACE": "dispatcher", "DISPATCHER_NAME": name}
    settings = Settings.from_env(env)
    kube = KubeClient.from_settings(settings)
    manifests = []
    for i in range(count):
        task = Task(id=f"{name}-{i}", image="localhost/anything:1", volume_mount_path="/work")
        manifest = build_job(task, ReplyRoute(), settings)
        manifest["metadata"].pop("finalizers", None)
        manifest["spec"]["suspend"] = not running
        manifests.append(manifest)
    start = time.perf_counter()
    with ThreadPoolExecutor(RAW_THREADS) as pool:
        list(pool.map(kube.create_job, manifests))
    elapsed = time.perf_counter() - start
    kube.close()
    selector = label_selector(name)
    if running:  # let the control plane finish their pods before anything else is measured
        wait_for("the raw Jobs' pods", lambda: count_pods(selector, "Succeeded") >= count, 300, 2.0)
    delete_jobs(selector)
    wait_for("the raw pods to go", lambda: count_pods(selector) == 0, 300, 2.0)
    return count / elapsed


def delete_jobs(selector: str) -> None:
    """Delete every Job matching `selector` in one request (their pods go with them). Jobs left
    unanswered by a run that failed still carry the answer finalizer: it is taken off first."""
    settings = Settings.from_env({**stack_env(), "JOB_NAMESPACE": "dispatcher"})
    kube = KubeClient.from_settings(settings)
    held: list[str] = []
    kube.list_each(
        "jobs",
        selector,
        "",
        lambda job: (
            held.append(job["metadata"]["name"])
            if ANSWER_FINALIZER in (job["metadata"].get("finalizers") or [])
            else None
        ),
    )
    with ThreadPoolExecutor(RAW_THREADS) as pool:
        list(pool.map(lambda name: kube.release_job(name, ANSWER_FINALIZER, {}), held))
    kube.close()
    body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        f.write(json.dumps(body))
        f.flush()
        query = "?labelSelector=" + selector.replace(",", "%2C")
        path = "/apis/batch/v1/namespaces/dispatcher/jobs" + query
        done = kubectl("delete", "--raw", path, "-f", f.name, check=False)
        if done.returncode:
            print(f"  deleting the Jobs: {done.stderr.strip()}; deleting them one by one")
            kubectl("delete", "jobs", "-n", "dispatcher", "-l", selector, "--wait=false")


def count_pods(selector: str, phase: str = "") -> int:
    fields = f"--field-selector=status.phase={phase}" if phase else "--field-selector="
    out = kubectl(
        "get", "pods", "-n", "dispatcher", "-l", selector, fields, "--chunk-size=0", "-o", "name"
    )
    return len(out.stdout.split())


def wait_for(what: str, condition: Any, timeout: float, every: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


# -- answers ------------------------------------------------------------------------------------


# -- one size -----------------------------------------------------------------------------------


def start_worker(instance: Instance, broker: Broker, sampler: RssSampler) -> tuple[Worker, float]:
    """A worker with the default concurrency; the seconds from its start until it is ready."""
    worker = Worker(
        instance, LOG_DIR, concurrency=Settings.from_env(dict(os.environ)).worker_concurrency
    )
    started = time.monotonic()
    worker.start(broker, timeout=120)
    assert worker.proc is not None
    sampler.pid = worker.proc.pid
    wait_ready(int(instance.extra["HEALTH_PORT"]), worker.proc, 120)
    return worker, time.monotonic() - started


def say(what: str) -> None:
    print(f"  {datetime.now(UTC):%H:%M:%S} {what}", flush=True)


def measure(n: int) -> Row:
    row = Row(n)
    say("raw ceilings")
    row.raw_rate = raw_ceiling(min(n, RAW_JOBS), running=False)
    row.raw_running_rate = raw_ceiling(min(n, RAW_JOBS), running=True)
    port = free_port()
    instance = Instance(extra={**KWOK, "MAX_ACTIVE_JOBS": "0", "HEALTH_PORT": str(port)})
    selector = label_selector(instance.name)
    broker = Broker(instance)
    t0 = time.monotonic()
    sampler = RssSampler(t0)
    answers = ResponseCollector(instance, t0)
    worker: Worker | None = None
    try:
        with JobMonitor(instance.env()) as monitor:
            # 1. idle worker, then N tasks that all finish at one time
            say("worker 1 starts; publishing")
            worker, _ = start_worker(instance, broker, sampler)
            assert worker.proc is not None
            time.sleep(2)
            row.idle_mib = rss_mib(worker.proc.pid)
            finish = datetime.now(UTC) + timedelta(seconds=n / EXPECTED_RATE + MARGIN_SECONDS)
            finish_at = finish.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            ids = [f"s{n}-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
            for task_id in ids:
                broker.publish(
                    {
                        "id": task_id,
                        "image": "localhost/anything:1",
                        "volume_mount_path": "/work",
                        "env": {"KWOK_FINISH_AT": finish_at},
                    }
                )
            wait_for(f"{n} Jobs", lambda: len(monitor.created) >= n, n / 10 + 120, 0.2)
            times = sorted(monitor.created.values())
            first = times[0]
            row.create_rate = (n - 1) / max(times[-1] - first, 1e-6)
            row.created_curve = [(t - t0, i + 1) for i, t in enumerate(times)]
            until_finish = (finish - datetime.now(UTC)).total_seconds()
            running = lambda: count_pods(selector, "Running") >= n  # noqa: E731
            wait_for("every pod running", running, max(10.0, until_finish - 40), 2.0)
            time.sleep(2)
            row.peak_mib = rss_mib(worker.proc.pid)
            row.kb_per_job = (row.peak_mib - row.idle_mib) * 1024 / n
            row.connections = api_connections(worker.proc.pid)
            if datetime.now(UTC) > finish - timedelta(seconds=20):
                raise RuntimeError("creating the Jobs took longer than planned; raise the margin")

            # 2. restart with N in flight
            say(f"{n} in flight: restarting")
            stop(worker, port, row)
            restarted = time.monotonic()
            worker, row.restart_ready_s = start_worker(instance, broker, sampler)
            time.sleep(3)
            row.restart_peak_mib = sampler.peak_since(restarted)
            if datetime.now(UTC) > finish - timedelta(seconds=5):
                raise RuntimeError("the restart ran into the finish time; raise the margin")
            stop(worker, port, row)

            # 3. the pods finish while no worker runs; a new worker answers them all
            say("waiting for every pod to finish")
            pause = (finish - datetime.now(UTC)).total_seconds()
            time.sleep(max(0.0, pause))
            wait_for("every pod finished", lambda: count_pods(selector, "Succeeded") >= n, 300, 2.0)
            wait_for("every Job ended", lambda: monitor.ended() >= n, 300, 1.0)
            monitor.__exit__()  # its watch would take CPU from what is measured next
            say("worker 3 starts: answering")
            began = time.monotonic()
            cpu_before = cpu_snapshot(None)  # from the worker's start: its lists count too
            worker, row.finalize_ready_s = start_worker(instance, broker, sampler)
            assert worker.proc is not None
            answers.wait(n, n / 20 + 120)
            cpu_after = cpu_snapshot(worker.proc.pid)
            used = {k: cpu_after[k] - cpu_before[k] for k in cpu_before}
            row.finalize_cpu_ms = {
                k: v * 1000 / n for k, v in used.items() if k not in ("idle", "all")
            }
            row.finalize_idle = used["idle"] / max(used["all"], 1e-6)
            spent, made = kube_requests(port, "sum"), kube_requests(port)
            row.finalize_answer_ms = {v: spent[v] * 1000 / made[v] for v in made if made[v]}
            arrived = sorted(t for t, _ in answers.bodies)
            row.first_answer_s = arrived[0] - (began - t0)
            row.all_answered_s = arrived[-1] - (began - t0)
            row.finalize_rate = (n - 1) / (arrived[-1] - arrived[0])
            row.finalize_peak_mib = sampler.peak_since(began)
            row.answered_curve = [
                (t, i + 1) for i, (t, _) in enumerate(sorted(answers.bodies, key=lambda a: a[0]))
            ]
            time.sleep(3)  # a duplicate would show up now
            stop(worker, port, row)
        seen = Counter(body.get("id") for _, body in answers.bodies)
        row.answered = len(seen.keys() & set(ids))
        row.lost = n - row.answered
        row.duplicates = sum(c - 1 for c in seen.values() if c > 1)
        row.wrong = sum(
            1 for _, b in answers.bodies if b.get("exit") != 0 or b.get("output") != "done\n"
        )
        row.rss_curve = sampler.curve
    finally:
        if worker is not None:  # a run cut short must not leave its worker running
            worker.stop()
        answers.stop()
        sampler.stop()
        broker.close()
        delete_jobs(selector)
    wait_for("the pods to go", lambda: count_pods(selector) == 0, 300, 3.0)
    return row


# -- output -------------------------------------------------------------------------------------


def table(title: str, header: list[str], rows: list[list[object]]) -> str:
    return f"**{title}**\n\n{markdown_table(header, rows)}"


def report(rows: list[Row]) -> str:
    create = table(
        "Creating Jobs (all tasks queued at once). Raw: this harness, 8 threads creating the same "
        "Jobs directly — suspended (the API server alone) and running (pods on the kwok node)",
        ["tasks", "raw suspended/s", "raw running/s", "dispatcher Jobs/s", "ratio (susp. / run.)"],
        [
            [
                f"{r.n:,}",
                f"{r.raw_rate:.0f}",
                f"{r.raw_running_rate:.0f}",
                f"{r.create_rate:.0f}",
                f"{r.create_rate / r.raw_rate:.2f} / {r.create_rate / r.raw_running_rate:.2f}",
            ]
            for r in rows
        ],
    )
    requests = table(
        "Kubernetes requests per task, counted by the dispatcher's client (all three workers, "
        "every verb but watch)",
        ["tasks", "requests/task", "create", "patch", "log", "get", "list", "delete"],
        [
            [f"{r.n:,}", f"{r.requests_per_task:.3f}"]
            + [
                f"{r.requests[v] / r.n:.3f}"
                for v in ("create", "patch", "log", "get", "list", "delete")
            ]
            for r in rows
        ],
    )
    memory = table(
        "Memory and connections with every task in flight",
        ["tasks in flight", "RSS idle MiB", "RSS MiB", "KB per Job", "API connections"],
        [
            [
                f"{r.n:,}",
                f"{r.idle_mib:.0f}",
                f"{r.peak_mib:.0f}",
                f"{r.kb_per_job:.1f}",
                r.connections,
            ]
            for r in rows
        ],
    )
    restart = table(
        "Restart with every task in flight; then every task ended while no worker ran, and a "
        "new worker answers them all",
        [
            "tasks",
            "ready after restart s",
            "peak MiB",
            "first answer s",
            "all answered s",
            "answers/s",
            "peak MiB ",
            "answered",
            "lost",
            "duplicates",
            "wrong",
        ],
        [
            [
                f"{r.n:,}",
                f"{r.restart_ready_s:.1f}",
                f"{r.restart_peak_mib:.0f}",
                f"{r.first_answer_s:.1f}",
                f"{r.all_answered_s:.1f}",
                f"{r.finalize_rate:.0f}",
                f"{r.finalize_peak_mib:.0f}",
                f"{r.answered:,}",
                r.lost,
                r.duplicates,
                r.wrong,
            ]
            for r in rows
        ],
    )
    processes = ["worker", *STACK_PROCESSES, "harness", "other"]
    cost = table(
        "Where finalize's time goes: CPU ms per answer by process (from the answering worker's "
        "start to the last answer), the machine's idle share meanwhile, and the API server's "
        "mean answer time (ms) as that worker saw it",
        ["tasks", *processes, "idle", "patch ms", "log ms"],
        [
            [f"{r.n:,}"]
            + [f"{r.finalize_cpu_ms.get(p, 0):.1f}" for p in processes]
            + [f"{r.finalize_idle:.0%}"]
            + [f"{r.finalize_answer_ms.get(v, 0):.0f}" for v in ("patch", "log")]
            for r in rows
        ],
    )
    return "\n\n".join([create, requests, memory, restart, cost])


def segments(curve: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """The curve cut where no sample came for over a second (one worker stopped, the next not
    yet started)."""
    parts: list[list[tuple[float, float]]] = []
    for point in curve:
        if not parts or point[0] - parts[-1][-1][0] > 1.0:
            parts.append([])
        parts[-1].append(point)
    return parts


def plot(rows: list[Row]) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        (line,) = ax1.plot(*zip(*r.created_curve, strict=True), label=f"{r.n:,} created")
        ax1.plot(
            *zip(*r.answered_curve, strict=True),
            linestyle="--",
            color=line.get_color(),
            label=f"{r.n:,} answered",
        )
        for i, segment in enumerate(segments(r.rss_curve)):  # one line per worker process
            label = f"{r.n:,} tasks" if i == 0 else None
            ax2.plot(*zip(*segment, strict=True), color=line.get_color(), label=label)
    ax1.set_xlabel("seconds since the worker started")
    ax1.set_ylabel("Jobs")
    ax1.set_title("Jobs created, then answered after a restart")
    ax1.legend(fontsize=7)
    ax2.set_xlabel("seconds")
    ax2.set_ylabel("worker RSS MiB")
    ax2.set_title("Worker memory (three workers per run)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=90)


def write_doc(text: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    section = (
        f"{BEGIN}\n_Measured {stamp} by `make bench-scale` on the local stack in scale mode "
        f"(one real control plane, pods on one kwok node; {os.cpu_count()} cores)._\n\n"
        f"{text}\n\n![Jobs created and answered; worker memory](benchmarks-scale.png)\n{END}"
    )
    doc = DOC.read_text()
    start, end = doc.index(BEGIN), doc.index(END) + len(END)
    DOC.write_text(doc[:start] + section + doc[end:])


def main(argv: list[str]) -> None:
    write = "--write" in argv
    sizes = [int(a) for a in argv if a.isdigit()] or list(SIZES)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in sizes:
        print(f"scale: {n:,} tasks ...", flush=True)
        rows.append(measure(n))
        print(report(rows[-1:]), flush=True)
    text = report(rows)
    print("\n" + text)
    if write:
        write_doc(text)
        plot(rows)
        print(f"\nwrote {DOC.relative_to(ROOT)} and {PLOT.relative_to(ROOT)}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main(sys.argv[1:])
