"""`python -m keraslm.predict MODEL IMAGES...`: the `keraslm-predict` command
(`keraslm.inference.main`; `--help` lists the options).

`keraslm.predict(model, images)` is the prediction function of the package. Importing this
module as `keraslm.predict` replaces that attribute by the module, so the module is made
callable with the same signature, and both spellings keep working.
"""
import sys
import types

from keraslm.inference import main


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from keraslm.inference import predict

        return predict(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
