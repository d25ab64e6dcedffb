"""A small ctypes binding to eSpeak NG (the shared library and data shipped by `espeakng-loader`).

eSpeak is a formant synthesiser: fast (hundreds of times real time on one core), fully offline
and, used as below, deterministic, which makes it a good source of a self-contained speech
corpus. Its state is global to the library, so every call goes through the one `Engine` of the
process (`engine()`), which serialises them.

eSpeak silently falls back to a default voice for an unknown voice or variant name; this module
validates names against the bundled data first and raises a `ValueError` instead.
"""

from __future__ import annotations

import _ctypes
import ctypes
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

SAMPLE_RATE = 22050  # what eSpeak NG's voices produce; checked against espeak_Initialize

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_END_PAUSE = 0x1000  # espeakENDPAUSE: finish with the sentence-final pause
_POS_CHARACTER = 1
_EE_OK = 0
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
RATE_LIMITS = (80, 450)  # words per minute eSpeak accepts
PERCENT_LIMITS = (0, 100)  # pitch and range are 0..100 (50 = the voice's own)


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # (priority byte, NUL-terminated code)* then a 0 byte
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.c_void_p)


@dataclass(frozen=True)
class VoiceInfo:
    """One language voice of the bundled data (e.g. identifier `gmw/en-US`, name `English (America)`)."""

    identifier: str
    name: str
    languages: tuple[str, ...]

    @property
    def short_name(self) -> str:
        """The file name, lower-cased: what `espeak-ng -v` accepts (e.g. `en-us`)."""
        return self.identifier.rsplit("/", 1)[-1].lower()


def _paths() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the synthetic corpus needs eSpeak NG: pip install espeakng-loader") from err
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


def data_path() -> Path:
    """The bundled `espeak-ng-data` folder."""
    return Path(_paths()[1])


def _parse_languages(ptr: int | None) -> tuple[str, ...]:
    out: list[str] = []
    if not ptr:
        return ()
    offset = 0
    while ctypes.string_at(ptr + offset, 1) != b"\x00":  # priority byte; 0 ends the list
        code = ctypes.string_at(ptr + offset + 1).decode("ascii", "replace")
        out.append(code)
        offset += 2 + len(code)
    return tuple(out)


@lru_cache(maxsize=1)
def variant_names() -> tuple[str, ...]:
    """Variant names eSpeak can load (files of `voices/!v`), e.g. `m3`, `f2`, `klatt`."""
    folder = data_path() / "voices" / "!v"
    return tuple(sorted(p.name for p in folder.iterdir() if p.is_file()))


def variant_gender(variant: str) -> str:
    """`M`, `F` or `` from the variant file's `gender` line (LibriSpeech's SEX column)."""
    check_variant(variant)
    for line in (data_path() / "voices" / "!v" / variant).read_text(errors="replace").splitlines():
        parts = line.split()
        if parts and parts[0] == "gender" and len(parts) > 1:
            return {"male": "M", "female": "F"}.get(parts[1].lower(), "")
    return ""


def check_variant(variant: str) -> None:
    if variant not in variant_names():
        raise ValueError(f"unknown eSpeak variant {variant!r}; the bundled data has: "
                         f"{', '.join(variant_names())}")


class Engine:
    """The process-wide eSpeak NG front end: list voices, synthesise text to int16 samples.

    eSpeak keeps synthesis state in C statics that no API call resets (the pitch-flutter phase
    in its wave generator advances with every sample produced), so the same call made twice in
    one process gives different samples. Each `synthesize` therefore opens the library, runs
    and closes it again (under a lock): a fresh load starts from the library's initial state,
    which makes every utterance depend only on its own arguments, whatever came before it.
    Opening and initialising costs under a millisecond once the files are in the page cache.
    """

    def __init__(self) -> None:
        self._lib_path, self._data = _paths()
        self._lock = threading.Lock()
        self._warned = False
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._on_audio)  # keep a reference: C holds the pointer
        with self._lock, self._session() as lib:
            self.version: str = lib.espeak_Info(None).decode()
            self.voices: list[VoiceInfo] = self._list_voices(lib)
        self._short_names = {v.short_name for v in self.voices}

    @contextmanager
    def _session(self) -> Iterator[ctypes.CDLL]:
        """Load and initialise a fresh instance of the library; unload it on exit."""
        lib = ctypes.CDLL(self._lib_path)
        try:
            _declare(lib)
            rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 500, self._data.encode(),
                                         _INITIALIZE_DONT_EXIT)
            if rate != SAMPLE_RATE:
                raise RuntimeError(f"eSpeak NG failed to initialise from {self._data} (returned {rate})")
            lib.espeak_SetSynthCallback(self._callback)
            yield lib
        finally:
            lib.espeak_Terminate()
            handle = lib._handle
            del lib
            _ctypes.dlclose(handle)
            self._check_unloaded()

    def _check_unloaded(self) -> None:
        """Warn (once) when another part of the process keeps the library loaded: then its
        statics survive between calls and repeated synthesis is no longer sample-identical."""
        if self._warned:
            return
        try:
            probe = ctypes.CDLL(self._lib_path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        except OSError:
            return  # unloaded, as intended
        _ctypes.dlclose(probe._handle)
        self._warned = True
        warnings.warn(f"{self._lib_path} stays loaded by another user in this process; eSpeak output "
                      "may then depend on earlier calls", RuntimeWarning, stacklevel=3)

    def _on_audio(self, wav, numsamples: int, events) -> int:  # noqa: ANN001 - ctypes pointers
        if wav and numsamples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0  # 0 = continue

    @staticmethod
    def _list_voices(lib: ctypes.CDLL) -> list[VoiceInfo]:
        array = lib.espeak_ListVoices(None)
        out: list[VoiceInfo] = []
        i = 0
        while array[i]:
            v = array[i].contents
            out.append(VoiceInfo(identifier=v.identifier.decode(), name=v.name.decode(),
                                 languages=_parse_languages(v.languages)))
            i += 1
        return out

    def voice_names(self, language_prefix: str = "") -> list[str]:
        """Short voice names (e.g. `en-us`, `en-gb-scotland`) with a language starting with the prefix."""
        return sorted(v.short_name for v in self.voices
                      if any(code.startswith(language_prefix) for code in v.languages))

    def check_voice(self, voice: str) -> None:
        if voice.lower() not in self._short_names:
            english = ", ".join(self.voice_names("en"))
            raise ValueError(f"unknown eSpeak voice {voice!r}; English voices in the bundled data: "
                             f"{english}")

    def synthesize(self, text: str, voice: str, variant: str | None = None, rate: int = 175,
                   pitch: int = 50, pitch_range: int = 50, noise_seed: int = 0,
                   end_pause: bool = True) -> np.ndarray:
        """Text -> int16 samples at `SAMPLE_RATE`.

        `rate` is in words per minute; `pitch` and `pitch_range` are 0..100 around the voice's own
        (50). `noise_seed` seeds eSpeak's breath-noise generator (it draws from the C library's
        `rand`, so the seed is set under the lock right before synthesis); the same arguments
        always give the same samples. `end_pause` keeps the sentence-final pause: without it
        eSpeak drops the last partial buffer about one time in ten, cutting up to ~0.1 s of the
        final sound's decay.
        """
        self.check_voice(voice)
        if variant is not None:
            check_variant(variant)
        for label, value, (low, high) in (("rate", rate, RATE_LIMITS), ("pitch", pitch, PERCENT_LIMITS),
                                          ("pitch_range", pitch_range, PERCENT_LIMITS)):
            if not low <= value <= high:
                raise ValueError(f"{label}={value} is outside eSpeak's range [{low}, {high}]")
        name = voice.lower() + (f"+{variant}" if variant else "")
        data = text.encode("utf-8") + b"\x00"
        with self._lock, self._session() as lib:
            if lib.espeak_SetVoiceByName(name.encode()) != _EE_OK:
                raise ValueError(f"eSpeak could not load voice {name!r}")
            for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range)):
                lib.espeak_SetParameter(param, int(value), 0)
            lib.espeak_ng_SetRandSeed(noise_seed)
            self._chunks = []
            flags = _CHARS_UTF8 | (_END_PAUSE if end_pause else 0)
            status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, flags, None, None)
            if status != _EE_OK:
                raise RuntimeError(f"espeak_Synth failed with status {status} for {text!r}")
            lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if not chunks:
            raise RuntimeError(f"eSpeak produced no audio for {text!r} with voice {name!r}")
        return np.concatenate(chunks)


def _declare(lib: ctypes.CDLL) -> None:
    """C signatures of the functions used (ctypes would otherwise guess int for everything)."""
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_Terminate.restype = ctypes.c_int
    lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Info.restype = ctypes.c_char_p


@lru_cache(maxsize=1)
def engine() -> Engine:
    """The one engine of this process (eSpeak's state is global to the library, hence the lock)."""
    return Engine()


def synthesize(text: str, voice: str, variant: str | None = None, **kwargs) -> np.ndarray:
    """Shortcut for `engine().synthesize(...)`."""
    return engine().synthesize(text, voice, variant, **kwargs)
