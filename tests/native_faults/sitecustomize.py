"""Faults in native code, in every Python process started with this folder on PYTHONPATH.

Decoder: once `steadyscribe.tasks.decode` is imported, decoding an input whose name starts with
`segfault` kills the decoding process with SIGSEGV, one whose name starts with `hang` sleeps
for an hour, and a decoder counts as hung after HANG_S seconds without I/O.
Engine: once `steadyscribe.inference` is imported, transcribing a group that holds an input whose
name starts with `enginecrash` kills the transcribing process with SIGSEGV.
Patched in the run's own process as well: a crash there would take the whole run down.
"""

import importlib.abc
import importlib.machinery
import os
import signal
import sys
import time
from pathlib import PurePosixPath

HANG_S = 5.0


def _patch_decoder(module) -> None:
    decode_to_raw = module._decode_to_raw

    def faulty(source, *args, **kwargs):
        name = PurePosixPath(source).name
        if name.startswith("segfault"):
            os.kill(os.getpid(), signal.SIGSEGV)
        if name.startswith("hang"):
            time.sleep(3600)
        return decode_to_raw(source, *args, **kwargs)

    module._decode_to_raw = faulty
    module.DECODE_HANG_S = HANG_S


def _patch_engine(module) -> None:
    transcribe_files = module.transcribe_files

    def faulty(engine, decoded, *args, **kwargs):
        if any(PurePosixPath(item.source).name.startswith("enginecrash") for item in decoded.values()):
            os.kill(os.getpid(), signal.SIGSEGV)
        return transcribe_files(engine, decoded, *args, **kwargs)

    module.transcribe_files = faulty


PATCHES = {"steadyscribe.tasks.decode": _patch_decoder, "steadyscribe.inference": _patch_engine}


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_and_patch
        return spec


sys.meta_path.insert(0, _PatchOnImport())
