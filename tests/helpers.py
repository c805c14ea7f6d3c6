"""Small helpers shared by the test modules (imported as `helpers`; tests/ is on sys.path)."""
import base64
import json
import os
import pickle

from filelock import FileLock


def subprocess_env():
    """The environment for a child Python process: quiet TensorFlow, and no PYTHONPATH, so the
    child imports only what is installed (a child that must not import keraslm really cannot)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)
    return env


def built_once(tmp_path_factory, name, build):
    """`build(folder)`'s result, computed once per test run even across pytest-xdist workers:
    the first worker builds it into a folder every worker sees, under a file lock, and keeps the
    result as a pickle; the others wait for it and load it."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # Shared by the workers of this run.
    folder = base / f"shared_{name}"
    done = base / f"shared_{name}.pickle"
    with FileLock(str(base / f"shared_{name}.lock")):
        if not done.exists():
            result = build(folder)
            done.write_bytes(pickle.dumps(result))
    return pickle.loads(done.read_bytes())


def saved_model_transport(loaded, log, answer="request"):
    """Runs the requested signature of the loaded SavedModel and answers like TF Serving's REST API:
    {"b64": ...} values become the decoded bytes; bodies and answers go through JSON as over
    the wire. `answer`: "request" answers in the request's format as TF Serving does (row
    format -> {"predictions": [one object per instance]}, columnar -> {"outputs": {...}});
    "rows" / "columns" always in that format."""
    import tensorflow as tf

    def value(item):
        return base64.b64decode(item["b64"]) if isinstance(item, dict) and "b64" in item else item

    def transport(path, body):
        body = json.loads(json.dumps(body))
        log.append((path, body["signature_name"], "instances" in body))
        signature = loaded.signatures[body["signature_name"]]
        specs = signature.structured_input_signature[1]
        if "instances" in body:
            rows = body["instances"]
            inputs = {name: tf.constant([value(row[name]) for row in rows], specs[name].dtype)
                      for name in specs}
        else:
            inputs = {name: tf.constant(body["inputs"][name], specs[name].dtype) for name in specs}
        outputs = {key: tensor.numpy().tolist() for key, tensor in signature(**inputs).items()}
        rows_out = answer == "rows" or (answer == "request" and "instances" in body)
        if rows_out:
            if "instances" not in body:  # One unbatched answer as a single row.
                outputs = {key: [item] for key, item in outputs.items()}
            count = len(next(iter(outputs.values())))
            response = {"predictions": [{key: item[i] for key, item in outputs.items()}
                                        for i in range(count)]}
        else:
            response = {"outputs": outputs}
        return json.loads(json.dumps(response))

    return transport
