"""Bundles made to measure from another bundle, for the tests and the benchmarks."""
import hashlib
import json
import zipfile


def rewrite_bundle(bundle, out, edit):
    """A copy of a bundle after edit(members, manifest) changed members' bytes or the manifest;
    the sums are computed anew, so the copy verifies (tests that need another bundle)."""
    with zipfile.ZipFile(bundle) as old:
        members = dict((info.filename, old.read(info)) for info in old.infolist())
    manifest = json.loads(members.pop("manifest.json").decode())
    edit(members, manifest)
    for name in manifest["members"]:
        manifest["members"][name] = {"sha256": hashlib.sha256(members[name]).hexdigest(), "size": len(members[name])}
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as new:
        for name, data in members.items():
            new.writestr(name, data)
        new.writestr("manifest.json", json.dumps(manifest))
    return out


def spoil_deflate(data, member):
    """A zip's bytes with member's deflate stream made unreadable (its first block type set to the invalid
    one): reading it raises zlib's 'invalid block type', as a flipped bit in a real download does."""
    import io
    import struct
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(member)
    assert info.compress_type == zipfile.ZIP_DEFLATED and info.compress_size > 0
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    return data[:start] + b"\xff" + data[start + 1:]
