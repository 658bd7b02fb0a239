"""`kvmkit img`: create, info, check and convert disk images, spelled like qemu-img."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
from typing import Any, NoReturn, TextIO

from kvmkit.block.create import create_image
from kvmkit.block.driver import BlockDriver
from kvmkit.block.formats.qcow2.check import CheckResult, check_qcow2
from kvmkit.block.formats.qcow2.driver import Qcow2Driver
from kvmkit.block.open import open_image
from kvmkit.errors import ConfigError, KvmkitError

EXIT_OK, EXIT_ERROR, EXIT_CORRUPT, EXIT_LEAKS, EXIT_NO_CHECK = 0, 1, 2, 3, 63
_SUFFIXES = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_CONVERT_CHUNK = 1 << 20  # all-zero chunks this large (or one qcow2 destination cluster) are not written
_CONVERT_BUFFER = 8 << 20  # bytes read per call, and written per call when the chunks in it hold data


def parse_size(text: str) -> int:
    """Bytes from '1024', '64k', '10M', '1.5G', '2T' (binary units, like qemu-img)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgtpBKMGTP]?)\s*", text)
    if not match:
        raise ConfigError(f"invalid size {text!r} (use a number with an optional k, M, G or T suffix)")
    return int(float(match.group(1)) * _SUFFIXES[match.group(2).lower()])


def parse_options(text: str | None) -> dict[str, Any]:
    """'-o key=value,key=value' into a dict; sizes in cluster_size accept suffixes."""
    options: dict[str, Any] = {}
    for item in filter(None, (text or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"invalid option {item!r} (expected key=value)")
        options[key.strip()] = parse_size(value) if key.strip() == "cluster_size" else value.strip()
    return options


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    root = _Parser(prog="kvmkit img", add_help=False)
    sub = root.add_subparsers(dest="command", required=True, parser_class=_Parser)
    create = sub.add_parser("create", add_help=False)
    create.add_argument("-f", dest="format", default="raw")
    create.add_argument("-b", dest="backing")
    create.add_argument("-F", dest="backing_format")
    create.add_argument("-o", dest="options", action="append")
    create.add_argument("filename")
    create.add_argument("size", nargs="?")
    info = sub.add_parser("info", add_help=False)
    info.add_argument("-f", dest="format")
    info.add_argument("--output", choices=("human", "json"), default="human")
    info.add_argument("filename")
    check = sub.add_parser("check", add_help=False)
    check.add_argument("-f", dest="format")
    check.add_argument("-r", dest="repair", choices=("leaks", "all"))
    check.add_argument("--output", choices=("human", "json"), default="human")
    check.add_argument("filename")
    convert = sub.add_parser("convert", add_help=False)
    convert.add_argument("-f", dest="format")
    convert.add_argument("-O", dest="output_format", default="raw")
    convert.add_argument("-o", dest="options", action="append")
    convert.add_argument("-c", dest="compress", action="store_true")
    convert.add_argument("-p", dest="progress", action="store_true")
    convert.add_argument("source")
    convert.add_argument("destination")
    return root


def run_img(argv: list[str], stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run `kvmkit img ARGV`; returns the exit status (errors: one line on stderr, never a traceback)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        args = _parser().parse_args(argv)
        handler = {"create": _create, "info": _info, "check": _check, "convert": _convert}[args.command]
        return handler(args, out, err)
    except KvmkitError as exc:
        print(f"kvmkit img: {exc}", file=err)
    except OSError as exc:
        print(f"kvmkit img: {exc.filename or ''}: {exc.strerror or exc}", file=err)
    return EXIT_ERROR


def _create(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    options = parse_options(",".join(args.options or []))
    size = parse_size(args.size) if args.size is not None else None
    create_image(args.filename, args.format, size, backing_file=args.backing,
                 backing_format=args.backing_format, options=options)
    shown = f", size={size}" if size is not None else ""
    print(f"Formatting '{args.filename}', fmt={args.format}{shown}", file=out)
    return EXIT_OK


def image_info(path: str, format: str | None) -> dict[str, Any]:
    """qemu-img-style info dictionary (the keys `--output json` prints)."""
    with open_image(path, format, read_only=True, backing=False) as image:
        info = image.info()
    data: dict[str, Any] = {
        "virtual-size": info.virtual_size,
        "filename": path,
        "format": info.format,
        "actual-size": info.actual_size,
        "dirty-flag": info.dirty,
    }
    if info.cluster_size is not None:
        data["cluster-size"] = info.cluster_size
    if info.backing_file:
        data["backing-filename"] = info.backing_file
        folder = os.path.dirname(os.path.abspath(path))
        data["full-backing-filename"] = os.path.join(folder, info.backing_file)
        if info.backing_format:
            data["backing-filename-format"] = info.backing_format
    if info.format_specific:
        data["format-specific"] = {"type": info.format, "data": info.format_specific}
    return data


def _human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{int(n)} {unit}" if n == int(n) else f"{n:.3g} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


def _info(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    data = image_info(args.filename, args.format)
    if args.output == "json":
        print(json.dumps(data, indent=4), file=out)
        return EXIT_OK
    lines = [
        f"image: {data['filename']}",
        f"file format: {data['format']}",
        f"virtual size: {_human_size(data['virtual-size'])} ({data['virtual-size']} bytes)",
        f"disk size: {_human_size(data['actual-size'])}",
    ]
    if "cluster-size" in data:
        lines.append(f"cluster_size: {data['cluster-size']}")
    if "backing-filename" in data:
        lines.append(f"backing file: {data['backing-filename']}")
        if "backing-filename-format" in data:
            lines.append(f"backing file format: {data['backing-filename-format']}")
    specific = data.get("format-specific", {}).get("data", {})
    if specific:
        lines.append("Format specific information:")
        lines += [f"    {key}: {str(value).lower() if isinstance(value, bool) else value}"
                  for key, value in specific.items() if not isinstance(value, list)]
    print("\n".join(lines), file=out)
    return EXIT_OK


def _check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    writable = args.repair is not None
    with open_image(args.filename, args.format, read_only=not writable, backing=False) as image:
        if not isinstance(image, Qcow2Driver):
            print(f"kvmkit img: {args.filename}: this image format does not support checks", file=err)
            return EXIT_NO_CHECK
        result = check_qcow2(image, repair_leaks=writable, repair_errors=args.repair == "all")
    if args.output == "json":
        print(json.dumps(_check_json(args.filename, result), indent=4), file=out)
    else:
        _print_check(result, out)
    leaks = result.leaks - result.leaks_fixed
    corruptions = result.corruptions - result.corruptions_fixed
    if result.check_errors:
        return EXIT_ERROR
    return EXIT_CORRUPT if corruptions else EXIT_LEAKS if leaks else EXIT_OK


def _check_json(path: str, r: CheckResult) -> dict[str, Any]:
    return {
        "filename": path, "format": "qcow2", "check-errors": r.check_errors,
        "image-end-offset": r.image_end_offset, "total-clusters": r.total_clusters,
        "allocated-clusters": r.allocated_clusters, "fragmented-clusters": r.fragmented_clusters,
        "compressed-clusters": r.compressed_clusters, "corruptions": r.corruptions - r.corruptions_fixed,
        "leaks": r.leaks - r.leaks_fixed, "corruptions-fixed": r.corruptions_fixed,
        "leaks-fixed": r.leaks_fixed,
    }


def _print_check(r: CheckResult, out: TextIO) -> None:
    for message in r.messages:
        print(message, file=out)
    leaks, corruptions = r.leaks - r.leaks_fixed, r.corruptions - r.corruptions_fixed
    if r.leaks_fixed or r.corruptions_fixed:
        print(f"The following inconsistencies were found and repaired:\n\n    {r.leaks_fixed} leaked clusters"
              f"\n    {r.corruptions_fixed} corruptions\n", file=out)
    if corruptions:
        print(f"\n{corruptions} errors were found on the image.\n"
              "Data may be corrupted, or further writes to the image may corrupt it.", file=out)
    if leaks:
        print(f"\n{leaks} leaked clusters were found on the image.\n"
              "This means waste of disk space, but no harm to data.", file=out)
    if not leaks and not corruptions:
        print("No errors were found on the image.", file=out)
    total = max(r.total_clusters, 1)
    print(f"{r.allocated_clusters}/{r.total_clusters} = {100 * r.allocated_clusters / total:.2f}% allocated, "
          f"{100 * r.fragmented_clusters / max(r.allocated_clusters, 1):.2f}% fragmented, "
          f"{100 * r.compressed_clusters / max(r.allocated_clusters, 1):.2f}% compressed clusters", file=out)
    print(f"Image end offset: {r.image_end_offset}", file=out)


def _convert(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    options = parse_options(",".join(args.options or []))
    if args.compress and args.output_format != "qcow2":
        raise ConfigError(f"compressed output (-c) needs -O qcow2, not {args.output_format}")
    with open_image(args.source, args.format, read_only=True) as source:
        create_image(args.destination, args.output_format, source.size, options=options)
        with open_image(args.destination, args.output_format) as destination:
            copy_image(source, destination, compress=args.compress,
                       progress=err if args.progress and err.isatty() else None)
    return EXIT_OK


def copy_image(source: BlockDriver, destination: BlockDriver, *, compress: bool = False,
               progress: TextIO | None = None) -> None:
    """Copy every non-zero chunk of `source` into a freshly created `destination` of the same size."""
    if compress and not isinstance(destination, Qcow2Driver):
        raise ConfigError("compressed copies need a qcow2 destination")
    chunk = destination.cluster_size if isinstance(destination, Qcow2Driver) else _CONVERT_CHUNK
    if not compress:
        chunk = max(chunk, _CONVERT_CHUNK // chunk * chunk)
    size = source.size
    zero = bytes(chunk)
    buf = bytearray(max(chunk, _CONVERT_BUFFER // chunk * chunk))
    pos = 0
    shown = -1
    while pos < size:
        may_hold_data, run = source.block_status(pos, size - pos)
        if not may_hold_data and run >= chunk:
            pos += run - run % chunk
        else:  # a data run: copied a buffer at a time (all-zero chunks skipped) without asking again
            end = min(size, pos + max(run, 1))
            while pos < end:
                n = min(len(buf), size - pos, -(-(end - pos) // chunk) * chunk)
                source.pread(pos, [memoryview(buf)[:n]])
                _write_chunks(destination, pos, buf, n, chunk, zero, compress)
                pos += n
        if progress is not None and int(200 * pos / size) != shown:
            shown = int(200 * pos / size)
            progress.write(f"    ({100 * pos / size:.2f}/100%)\r")
            progress.flush()
    if progress is not None:
        progress.write("    (100.00/100%)\n")
    destination.flush()


def _write_chunks(destination: BlockDriver, offset: int, buf: bytearray, length: int, chunk: int, zero: bytes,
                  compress: bool) -> None:
    """Write the chunks of buf[:length] that are not all zero: one write per run of them, or compressed ones."""
    view = memoryview(buf)
    data = [not _all_zero(buf, at, min(at + chunk, length), zero) for at in range(0, length, chunk)]
    at = 0
    for has_data, group in itertools.groupby(data):
        n = min(len(list(group)) * chunk, length - at)
        if has_data and compress:
            for c in range(at, at + n, chunk):
                destination.write_compressed(offset + c, bytes(view[c : min(c + chunk, at + n)]))
        elif has_data:
            destination.pwrite(offset + at, [view[at : at + n]])
        at += n


def _all_zero(buf: bytearray, start: int, stop: int, zero: bytes) -> bool:
    """buf[start:stop] holds only zero bytes (a short prefix first: data usually differs at once). Slices of a
    bytearray compare at memcmp speed; memoryviews would compare byte by byte."""
    return buf[start : start + 64] == zero[: min(64, stop - start)] and buf[start:stop] == zero[: stop - start]
