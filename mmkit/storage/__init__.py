"""Dimension data files: a checked header, then the payload at a 64 KiB boundary.

The format is written out byte by byte in ``specs/data-format.md``. Loading copies the
payload into the region with ``readinto`` and verifies a CRC-32 per layer; the file is
never mapped, so truncating it later cannot raise SIGBUS in a reader. Writes go to a
temporary file that is fsynced and renamed over the final name, so a crash leaves the old
file or the new one under that name, never a mix. Modules: ``format`` (the layout), ``files``
(opening and replacing), ``reader``, ``writer``, ``dataset``, ``inspection``, ``worker``.
"""

from __future__ import annotations

from mmkit.storage.dataset import Progress, generate_dataset
from mmkit.storage.files import Buffer, checked_path, open_regular
from mmkit.storage.format import (
    FORMAT_VERSION,
    MAGIC,
    MAX_DIMENSION_ID,
    MAX_LAYERS,
    NAME_BYTES,
    PAYLOAD_ALIGNMENT,
    SUFFIX,
    FileHeader,
    check_savable,
    dimension_filename,
    dimension_path,
    encode_header,
    read_header,
)
from mmkit.storage.inspection import Inspection, LayerCheck, inspect_file
from mmkit.storage.reader import read_dimension, read_header_file
from mmkit.storage.writer import write_dimension, write_layers

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_DIMENSION_ID",
    "MAX_LAYERS",
    "NAME_BYTES",
    "PAYLOAD_ALIGNMENT",
    "SUFFIX",
    "Buffer",
    "FileHeader",
    "Inspection",
    "LayerCheck",
    "Progress",
    "check_savable",
    "checked_path",
    "dimension_filename",
    "dimension_path",
    "encode_header",
    "generate_dataset",
    "inspect_file",
    "open_regular",
    "read_dimension",
    "read_header",
    "read_header_file",
    "write_dimension",
    "write_layers",
]
