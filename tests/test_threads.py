"""Which BLAS the kernels call, fastmlp's thread pool, and the parallel GEMM paths.

The small-shape sweeps of test_kernels.py never reach the thread pool (a GEMM
needs ~1M multiply-adds to be cut into chunks); here every cut (rows, columns,
the inner dimension of the skinny forward) runs at the shapes of the course's
networks, with one, two and three threads, and against float64 NumPy.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fastmlp
from fastmlp import _kernels as K
from fastmlp import reference as R

threadpoolctl = pytest.importorskip("threadpoolctl")


@pytest.fixture
def restore_threads():
    before = fastmlp.get_num_threads()
    yield
    fastmlp.set_num_threads(before)


# ----------------------------------------------------------------------------- the BLAS


def test_kernels_call_the_scipy_openblas32_library():
    import scipy_openblas32

    info = fastmlp.blas_info()
    expected = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True))
    # dladdr on the sgemm the extension resolved: the library it really calls, not one it could.
    assert os.path.realpath(info["library"]) == os.path.realpath(expected)
    assert "OpenBLAS" in info["config"]
    loaded = {os.path.realpath(lib["filepath"]): lib for lib in threadpoolctl.threadpool_info()}
    assert loaded[os.path.realpath(expected)]["internal_api"] == "openblas"


def test_threadpoolctl_sees_and_limits_fastmlps_threads(restore_threads):
    fastmlp.set_num_threads(2)
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        assert fastmlp.get_num_threads() == 1
    assert fastmlp.get_num_threads() == 2
    with fastmlp.threads(1):
        assert fastmlp.get_num_threads() == 1
    assert fastmlp.get_num_threads() == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_refuses_bad_values(bad):
    with pytest.raises(ValueError, match="expected a positive int number of threads"):
        fastmlp.set_num_threads(bad)


def test_kernels_leave_openblas_thread_count_as_they_found_it(restore_threads):
    fastmlp.set_num_threads(3)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((300, 3072)).astype(np.float32), rng.standard_normal((100, 3072)).astype(np.float32)
    K.linear_forward(np.empty((300, 100), np.float32), x, w)
    assert fastmlp.get_num_threads() == 3


def test_fresh_process_loads_the_library_through_the_package():
    # The extension names libscipy_openblas.so without a path: importing fastmlp must load it first.
    code = "from fastmlp import _kernels as K; import numpy as np; K.linear_forward(np.empty((2, 2)), np.eye(2), np.eye(2))"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_main_job_imports_no_more_than_it_needs():
    # Import time is part of every run: no package metadata, no download stack, no plotting.
    code = ("import sys, fastmlp.train, fastmlp.training, fastmlp.data, fastmlp.mlp; "
            "print(sorted(m for m in ('importlib.metadata', 'scipy_openblas32', 'urllib.request', 'http.client', "
            "'ssl', 'matplotlib', 'tqdm', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_version_matches_the_installed_metadata():
    from importlib.metadata import version

    assert fastmlp.__version__ == version("fastmlp")


# ----------------------------------------------------------------------------- the pool


@pytest.mark.parametrize("chunks,threads", [(1, 2), (2, 2), (7, 2), (5, 3), (4, 1)])
def test_pool_runs_every_chunk_exactly_once(chunks, threads):
    used, owners = K.pool_probe(chunks, threads)
    assert len(owners) == chunks and all(owners)  # every chunk ran (wrote its thread id)
    assert 1 <= used <= min(chunks, threads)


def test_pool_spreads_chunks_over_threads():
    # Workers may be asleep at the first call; over many calls both threads take chunks.
    seen = set()
    for _ in range(50):
        seen.update(K.pool_probe(8, 2)[1])
    assert len(seen) >= 2


def test_pool_survives_fork():
    K.pool_probe(4, 2)  # workers exist in the parent
    pid = os.fork()
    if pid == 0:  # the child has no workers: the pool must notice, not wait for them
        try:
            used, owners = K.pool_probe(4, 2)
            os._exit(0 if len(owners) == 4 and all(owners) else 1)
        except BaseException:
            os._exit(2)
    deadline = time.monotonic() + 60
    while True:  # a pool that waits for workers lost in the fork would hang: give up after a minute
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in the pool")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0


def test_pool_with_concurrent_callers_runs_every_chunk():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda _: K.pool_probe(6, 2)[1], range(40)))
    assert all(len(r) == 6 and all(r) for r in results)


# ----------------------------------------------------------------------------- parallel GEMMs

# (B, I, O): the course's first layer (K-split forward, column-split dW), an evaluation chunk,
# a wide layer (row/column splits), batch 17 (transposed forward with K-split), odd sizes.
SHAPES = [(200, 3072, 100), (1000, 3072, 100), (600, 1024, 512), (17, 3072, 100), (257, 1537, 301)]
TOL = {np.float32: dict(rtol=2e-4, atol=2e-3), np.float64: dict(rtol=1e-10, atol=1e-9)}


def _layer_results(B, I, O, dtype, layout, threads):
    fastmlp.set_num_threads(threads)
    rng = np.random.default_rng(B + I + O)
    x = rng.standard_normal((B, I)).astype(dtype)
    w = (rng.standard_normal((O, I)) / np.sqrt(I)).astype(dtype)
    if layout == "F":
        x, w = np.asfortranarray(x), np.asfortranarray(w)
    b = rng.standard_normal(O).astype(dtype)
    dy = rng.standard_normal((B, O)).astype(dtype)
    xr = np.maximum(x, 0)
    y = np.full((B, O), np.nan, dtype)
    K.linear_forward(y, x, w, b, True, np.full((1, max(1, K.forward_scratch_size(B, I, O))), np.nan, dtype))
    dw, db, dx = np.full((O, I), np.nan, dtype), np.full(O, np.nan, dtype), np.full((B, I), np.nan, dtype)
    K.linear_backward(dw, db, dx, dy, xr, w, True)
    w2, b2, dx2 = np.array(w, order="C"), b.copy(), np.full((B, I), np.nan, dtype)
    K.linear_backward_sgd(w2, b2, dx2, dy, xr, 0.01, 0.1, True)
    return x, w, b, dy, xr, (y, dw, db, dx, w2, b2, dx2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_parallel_gemm_paths_match_numpy(shape, layout, dtype, restore_threads):
    B, I, O = shape
    for threads in (1, 2, 3):
        x, w, b, dy, xr, (y, dw, db, dx, w2, b2, dx2) = _layer_results(B, I, O, dtype, layout, threads)
        x64, w64, dy64, xr64 = (a.astype(np.float64) for a in (x, w, dy, xr))
        np.testing.assert_allclose(y, np.maximum(x64 @ w64.T + b, 0), **TOL[dtype])
        ref_dx = (dy64 @ w64) * (xr64 > 0)
        ref_dw = dy64.T @ xr64
        np.testing.assert_allclose(dx, ref_dx, **TOL[dtype])
        np.testing.assert_allclose(dw, ref_dw, **TOL[dtype])
        np.testing.assert_allclose(db, dy64.sum(axis=0), **TOL[dtype])
        np.testing.assert_allclose(dx2, ref_dx, **TOL[dtype])  # dX with the old W
        np.testing.assert_allclose(w2, (1 - 0.01 * 0.1) * w64 - 0.01 * ref_dw, **TOL[dtype])
        np.testing.assert_allclose(b2, b - 0.01 * dy64.sum(axis=0), **TOL[dtype])


@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: "x".join(map(str, s)))
def test_results_are_deterministic_for_a_thread_count(shape, restore_threads):
    for threads in (1, 2):
        first = _layer_results(*shape, np.float32, "C", threads)[-1]
        again = _layer_results(*shape, np.float32, "C", threads)[-1]
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)


def test_k_split_forward_does_not_depend_on_the_thread_count(restore_threads):
    # The skinny forward's two inner-dimension halves are fixed: same sums with 1, 2 or 3 threads.
    outputs = [_layer_results(200, 3072, 100, np.float32, "C", threads)[-1][0] for threads in (1, 2, 3)]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])


# (B, D, O): batch 1 (GEMV), a small transposed batch, one BLAS call, a K-split, an M-split, an N-split.
IMAGE_SHAPES = [(1, 70, 5), (7, 70, 9), (33, 300, 40), (200, 3072, 100), (300, 40, 200), (64, 600, 1024)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", IMAGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", ["index+scale", "rows", "strided-src", "no-scratch"])
def test_linear_forward_images_equals_converting_first(shape, variant, dtype, restore_threads, openblas_images):
    # The conversion inside the GEMM's chunks gives the very numbers of convert_images + linear_forward.
    B, D, O = shape
    rng = np.random.default_rng(B * D + O)
    wide = rng.integers(0, 256, (3 * B + 2, D + 5), dtype=np.uint8)
    src = wide[:, :D] if variant == "strided-src" else np.ascontiguousarray(wide[:, :D])  # row stride D + 5
    index = None if variant == "rows" else rng.integers(0, len(src), B).astype(np.int64)
    offset = (rng.random(D) * 255).astype(dtype)
    scale = (rng.random(D) + 0.5).astype(dtype) if variant == "index+scale" else None
    w = (rng.standard_normal((O, D)) / 255).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    need = max(1, K.forward_scratch_size(B, D, O))
    for threads in (1, 2, 3):
        fastmlp.set_num_threads(threads)
        scratch = None if variant == "no-scratch" else np.full((1, need), np.nan, dtype)
        x_first, y_first = np.full((B, D), np.nan, dtype), np.full((B, O), np.nan, dtype)
        K.convert_images(x_first, src, index, offset, scale)
        K.linear_forward(y_first, x_first, w, b, True, scratch)
        x, y = np.full((B, D), np.nan, dtype), np.full((B, O), np.nan, dtype)
        K.linear_forward_images(y, x, src, index, offset, scale, w, b, True, scratch)
        np.testing.assert_array_equal(x, x_first)
        np.testing.assert_array_equal(y, y_first)
        x_ref, _ = R.linear_forward_images(src if index is not None else src[:B], index, offset, scale, w, b)
        np.testing.assert_array_equal(x, x_ref)  # the same operations in the same dtype
        y_ref = R.linear_forward(x_ref.astype(np.float64), w.astype(np.float64), b)  # exact inputs, float64 sums
        np.testing.assert_allclose(y, R.relu_forward(y_ref), **TOL[dtype])


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape,layout", [((1, 3072), "c"), ((257, 3072), "c"), ((300, 37), "c"),
                                          ((40, 70), "row-strided"), ((40, 70), "column-strided"), ((0, 5), "c")])
def test_pixel_sums_against_numpy(shape, layout, threads, restore_threads):
    rng = np.random.default_rng(4)
    n, d = shape
    if layout == "row-strided":  # rows 2 * d apart: a view the kernel reads in place
        src = rng.integers(0, 256, (n, 2 * d), dtype=np.uint8)[:, :d]
    elif layout == "column-strided":  # non-unit stride along D: the kernel copies
        src = rng.integers(0, 256, (n, 2 * d), dtype=np.uint8)[:, ::2]
    else:
        src = rng.integers(0, 256, shape, dtype=np.uint8)
    out = np.full(d, 12345, np.uint64)
    fastmlp.set_num_threads(threads)
    K.pixel_sums(out, src)
    np.testing.assert_array_equal(out, R.pixel_sums(src))
    np.testing.assert_array_equal(out, src.astype(np.int64).sum(axis=0))


def test_mlp_training_is_reproducible_with_threads(restore_threads):
    from fastmlp import MLP, optim

    def run():
        fastmlp.set_num_threads(2)
        rng = np.random.default_rng(0)
        model = MLP(3072, [100], 10, dtype=np.float32, seed=0, init="kaiming")
        opt = optim.SGD(model, 1e-3)
        for _ in range(5):
            model.train_step(rng.standard_normal((200, 3072)).astype(np.float32), rng.integers(0, 10, 200), opt)
        return model.state_dict()

    first, second = run(), run()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


# ----------------------------------------------------------------------------- concurrent callers
# One fitted model shared by threads (a web server's pool, joblib's threading backend) must give
# every caller the serial answer, and what other threads do must never move a chunk edge.


def _concurrently(fn, args_per_thread, timeout=300):
    """fn(*args) for each args on its own thread, all started together; their results in order."""
    from concurrent.futures import ThreadPoolExecutor

    start = threading.Barrier(len(args_per_thread))

    def run(args):
        start.wait(timeout=timeout)
        return fn(*args)

    with ThreadPoolExecutor(len(args_per_thread)) as ex:
        futures = [ex.submit(run, args) for args in args_per_thread]
        return [f.result(timeout=timeout) for f in futures]


def _trained_mlp(dtype=np.float32):
    model = fastmlp.MLP(3072, [100], 10, dtype=dtype, seed=0, init="kaiming")
    rng = np.random.default_rng(1)
    model.train_step(rng.standard_normal((200, 3072)).astype(dtype), rng.integers(0, 10, 200),
                     fastmlp.optim.SGD(model, 1e-2))
    return model


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_mlp_predicts_from_two_threads_as_serially(dtype, restore_threads):
    fastmlp.set_num_threads(2)
    model = _trained_mlp(dtype)
    rng = np.random.default_rng(2)
    inputs = [[rng.standard_normal((100, 3072)).astype(dtype) for _ in range(4)] for _ in range(2)]
    labels = rng.integers(0, 10, 100)
    serial = [[(model.predict_proba(x, batch_size=50), model.evaluate(x, labels, batch_size=50)) for x in xs]
              for xs in inputs]

    def calls(xs):
        return [[(model.predict_proba(x, batch_size=50), model.evaluate(x, labels, batch_size=50)) for x in xs]
                for _ in range(15)]

    for thread, rounds in enumerate(_concurrently(calls, [(xs,) for xs in inputs])):
        for results in rounds:
            for (proba, (loss, acc)), (want_proba, (want_loss, want_acc)) in zip(results, serial[thread]):
                np.testing.assert_array_equal(proba, want_proba)
                assert (loss, acc) == (want_loss, want_acc)


def test_one_classifier_predicts_from_two_threads_and_joblib_as_serially(restore_threads):
    fastmlp.set_num_threads(2)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((600, 3072)).astype(np.float32)
    y = rng.integers(0, 10, 600)
    clf = fastmlp.MLPClassifier(hidden_layer_sizes=(100,), random_state=0).partial_fit(X, y, classes=np.arange(10))
    parts = np.array_split(X, 6)
    want = [clf.predict_proba(part) for part in parts]
    for got in _concurrently(lambda: [clf.predict_proba(part) for part in parts for _ in range(5)], [(), ()]):
        for i, proba in enumerate(got):
            np.testing.assert_array_equal(proba, want[i // 5])
    joblib = pytest.importorskip("joblib")
    threaded = joblib.Parallel(n_jobs=3, prefer="threads")(joblib.delayed(clf.predict_proba)(p) for p in parts * 4)
    for i, proba in enumerate(threaded):
        np.testing.assert_array_equal(proba, want[i % len(parts)])


def test_training_one_mlp_from_two_threads_at_once_is_refused():
    model = fastmlp.MLP(3072, [100], 10, dtype=np.float32, seed=0)
    opt = fastmlp.optim.SGD(model, 1e-3)
    x = np.random.default_rng(4).standard_normal((500, 3072)).astype(np.float32)
    y = np.zeros(500, np.int64)

    def train():
        try:
            for _ in range(20):
                model.train_step(x, y, opt)
        except RuntimeError as e:
            return str(e)
        return None

    # Two threads are not guaranteed to overlap: try a few times until they do.
    for _ in range(20):
        messages = [m for m in _concurrently(train, [(), ()]) if m is not None]
        if messages:
            break
    assert messages, "two threads training one model at once were never refused"
    assert "another thread" in messages[0] and "train_step" in messages[0]


def _train_own_model(seed, steps=4):
    model = fastmlp.MLP(3072, [128, 64], 10, dtype=np.float32, seed=seed, init="kaiming")
    opt = fastmlp.optim.Adam(model, 1e-3)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        model.train_step(rng.standard_normal((256, 3072)).astype(np.float32), rng.integers(0, 10, 256), opt)
    return model.state_dict()


def test_four_threads_training_their_own_models_equal_serial_runs(restore_threads):
    fastmlp.set_num_threads(2)
    seeds = [(s,) for s in range(4)]
    serial = [_train_own_model(*s) for s in seeds]
    for _ in range(2):
        for got, want in zip(_concurrently(_train_own_model, seeds), serial):
            for name in want:
                np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@contextlib.contextmanager
def _kernels_running_on_another_thread():
    """Within the block, another thread calls a parallel GEMM over and over."""
    stop = threading.Event()
    x, w = np.ones((400, 3072), np.float32), np.ones((300, 3072), np.float32)

    def loop():
        y = np.empty((400, 300), np.float32)
        while not stop.is_set():
            K.linear_forward(y, x, w)

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join(timeout=60)


def test_get_num_threads_is_the_setting_while_other_threads_run_kernels(restore_threads):
    fastmlp.set_num_threads(3)
    with _kernels_running_on_another_thread():
        seen = {fastmlp.get_num_threads() for _ in range(2000)}
    assert seen == {3}
    assert fastmlp.get_num_threads() == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="os.fork with threads: Linux only")
def test_fork_while_another_thread_is_in_a_kernel_keeps_the_thread_count(restore_threads):
    fastmlp.set_num_threads(3)
    x, w = np.ones((400, 3072), np.float32), np.ones((300, 3072), np.float32)
    codes = []
    with _kernels_running_on_another_thread():
        for _ in range(20):
            time.sleep(0.002)
            pid = os.fork()
            if pid == 0:  # the child: its count, and again after a kernel of its own
                try:
                    before = fastmlp.get_num_threads()
                    K.linear_forward(np.empty((400, 300), np.float32), x, w)
                    os._exit(10 * before + fastmlp.get_num_threads())
                except BaseException:
                    os._exit(99)
            codes.append(_wait_child(pid))
    assert codes == [33] * len(codes)


def _wait_child(pid, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("a forked child hung")
        time.sleep(0.01)
