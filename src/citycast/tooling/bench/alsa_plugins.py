"""Where the pulse bench's `--sink alsa` sites find their sound server through ALSA.

A site with `--sink alsa:PCM` plays to an ALSA PCM. On a box with a sound server that PCM is the server's ALSA
plugin: `pulse:DEVICE=SINK` (libasound2-plugins, beside PulseAudio) or `pipewire:NODE=SINK` (pipewire-alsa).
Debian declares pipewire-alsa in conflict with pulseaudio (it takes over ALSA's default device), and the tests need
both servers on one machine, so `scripts/setup.sh` unpacks Debian's pipewire-alsa into `VENDORED_PIPEWIRE_ALSA`
without installing it, and the rig names that plugin in an ALSA configuration of its own (`$XDG_CONFIG_HOME/alsa/
asoundrc`, which alsa-lib reads after the system's), the PCM definition as pipewire-alsa's own. Where pipewire-alsa
is installed the system's plugin is used.
"""

from __future__ import annotations

from pathlib import Path

from citycast.media.sinks import ALSA_PLUGIN_DIRS, PIPEWIRE_ALSA_PLUGIN

VENDORED_PIPEWIRE_ALSA = Path("/opt/citycast/pipewire-alsa")


def pipewire_alsa_plugin() -> Path | None:
    """PipeWire's ALSA plugin: the system's if pipewire-alsa is installed, else the one set-up unpacked (the same
    folders, under `VENDORED_PIPEWIRE_ALSA`)."""
    for root in (Path("/"), VENDORED_PIPEWIRE_ALSA):
        for folder in ALSA_PLUGIN_DIRS:
            path = root / folder.relative_to("/") / PIPEWIRE_ALSA_PLUGIN
            if path.is_file():
                return path
    return None


def alsa_pcm(sound_server: str, sink: str) -> str:
    """The ALSA PCM that reaches `sink` of the rig's sound server through its ALSA plugin."""
    return f"pipewire:NODE={sink}" if sound_server == "pipewire" else f"pulse:DEVICE={sink}"


def alsa_env(sound_server: str, workdir: Path) -> dict[str, str]:
    """What a site process needs beside the sound server's own environment to open `alsa_pcm(...)`. PulseAudio's
    plugin is found by the system's configuration; PipeWire's is named in a configuration under `workdir`."""
    if sound_server != "pipewire":
        return {}
    plugin = pipewire_alsa_plugin()
    if plugin is None:
        raise FileNotFoundError(
            f"PipeWire's ALSA plugin ({PIPEWIRE_ALSA_PLUGIN}) is neither installed nor unpacked in "
            f"{VENDORED_PIPEWIRE_ALSA}: run scripts/setup.sh"
        )
    conf = workdir / "xdg" / "alsa" / "asoundrc"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        f'pcm_type.pipewire {{ lib "{plugin}" }}\n'
        "pcm.pipewire {\n"
        "    @args [ NODE ]\n"
        '    @args.NODE { type string default "-1" }\n'
        "    type pipewire\n"
        "    playback_node $NODE\n"
        "    capture_node $NODE\n"
        "}\n"
    )
    return {"XDG_CONFIG_HOME": str(conf.parent.parent)}
