"""Small helpers shared by the test modules (imported as `helpers`; tests/ is on sys.path)."""
import os


def subprocess_env():
    """The environment for a child Python process: quiet TensorFlow, and no PYTHONPATH, so the
    child imports only what is installed (a child that must not import keraslm really cannot)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)
    return env
