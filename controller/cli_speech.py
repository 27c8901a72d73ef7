"""`loa-controller say`: hear a text before the village does.

    loa-controller say "Lúc 14h30 ngày 6/12, mực nước 1,5 m" --print-text
    loa-controller say "..." --out thu.wav             # the engine's WAV
    loa-controller say "..." --out thu.ogg             # Opus, as the clusters get it
    loa-controller say "..." --target xa-tan-binh --out thu.wav
    echo "..." | loa-controller say - --voice mien-trung --out thu.wav

`--print-text` prints the words the voice will say (numbers, dates, units and
abbreviations read out, controller.speech_text). The voice is `--voice`, else that of
`--target` (a node, cluster or name of the fleet, as an announcement to it would be
spoken), else the province's (the fleet file's `voice:`). The config's `speech:` section
(number words, abbreviations, voices) applies; without a config, config/fleet.yaml and
the built-in settings.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from protocol.l10n import _

OPUS_SUFFIXES = (".ogg", ".opus")


def _text(args: argparse.Namespace) -> str:
    text: str = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        raise ValueError(_("the text is empty: write what the speakers should say, or - to "
                           "read it from standard input"))
    return text


def _voice(args: argparse.Namespace, config: Any) -> str | None:
    """--voice, else the voice of --target, else the province's (None: the default)."""
    if args.voice:
        return str(args.voice)
    from controller.fleet import load_fleet
    from controller.sources import DEFAULT_FLEET

    fleet_path = config.fleet if config else DEFAULT_FLEET
    if not args.target and not Path(fleet_path).exists():
        return None
    fleet = load_fleet(fleet_path, config.speech.voice_names() if config else None)
    if args.target:
        return fleet.voice_for(fleet.resolve(args.target))
    return fleet.node_voice(fleet.province.id)


def _profile(args: argparse.Namespace, config: Any) -> str:
    """The audio profile an .ogg is prepared for: the one most clusters of --target have
    (docs/audio.md), else the default (horns)."""
    from controller.audio_chain import DEFAULT_PROFILE

    if not args.target:
        return DEFAULT_PROFILE
    from controller.fleet import load_fleet
    from controller.sources import DEFAULT_FLEET

    fleet = load_fleet(config.fleet if config else DEFAULT_FLEET,
                       config.speech.voice_names() if config else None)
    by_profile = fleet.by_profile(fleet.resolve(args.target))
    return max(by_profile, key=lambda p: len(by_profile[p]), default=DEFAULT_PROFILE)


def cmd_say(args: argparse.Namespace) -> int:
    from controller.sources import find_config
    from controller.tts import speech_for

    if not args.out and not args.print_text:
        raise ValueError(_("say what? give --out FILE to write the speech (.wav, or .ogg as "
                           "the clusters get it), --print-text to see the words, or both"))
    if not args.verbose:  # the file written is said below; preparing it needs no story
        logging.getLogger("controller.audio").setLevel(logging.WARNING)
    text = _text(args)
    config = find_config(Path(args.config) if args.config else None)
    speech = speech_for(config.speech if config else None)
    voice = speech.voice(_voice(args, config))
    if args.print_text:
        print(speech.words(text))
    if not args.out:
        return 0
    out = Path(args.out)
    if out.suffix.lower() in OPUS_SUFFIXES:
        _say_as_sent(speech, text, voice.name, out, config, _profile(args, config))
    else:
        speech.speak(text, out, voice=voice.name)
    print(_("wrote {out} ({voice})", out=out, voice=voice.describe()), file=sys.stderr)
    return 0


def _say_as_sent(
    speech: Any, text: str, voice: str, out: Path, config: Any, profile: str
) -> None:
    """Speak, then prepare as a bulletin (the audio profile's processing, loudness, true
    peak, Opus) like the clusters of that profile receive it."""
    from controller.audio import AudioLibrary
    from controller.main import Settings

    settings = Settings.from_config(config).audio if config else None
    with tempfile.TemporaryDirectory(prefix="loa-say-") as tmp:
        wav = speech.speak(text, Path(tmp) / "speech.wav", voice=voice)
        store = AudioLibrary(Path(tmp) / "content", settings)
        prepared = store.prepare([wav], profile=profile)
        out.write_bytes(store.read(prepared.sha256))


def register(sub: Any, default_config: str) -> None:
    """Add the `say` subcommand to loa-controller's parser."""
    p = sub.add_parser(
        "say", help="speak a text to a file, or print the words it becomes, before sending it",
        description="Speak TEXT as an urgent announcement would be spoken, to a file, and/or "
        "print the words the voice will say (numbers, dates, units, abbreviations read out).",
    )
    p.add_argument("text", metavar="TEXT", help="the text, in quotes; - to read standard input")
    p.add_argument("--voice", metavar="V",
                   help="mien-bac, mien-trung, mien-nam, or a voice of speech.voices "
                   "(default: the voice of --target, else the province's)")
    p.add_argument("--target", action="append", metavar="NODE",
                   help="speak with the voice an announcement to this node, cluster or name "
                   "would have, and prepare an .ogg for its speakers' audio profile (repeat "
                   "for several)")
    p.add_argument("--out", metavar="FILE",
                   help="write the speech: FILE.wav as the engine makes it, FILE.ogg as the "
                   "clusters get it (Opus, loudness)")
    p.add_argument("--print-text", action="store_true",
                   help="print the words the voice will say")
    p.add_argument("--config", help=f"controller config YAML (default: {default_config} if "
                   "present, else config/fleet.yaml and the built-in speech settings)")
    p.set_defaults(func=cmd_say)
