"""Copying particles into the members of a Scipion set by SQL, in one statement per table.

pwem writes a set item by item (about 0.4 ms each: 7 minutes for a million particles), which
a streaming run, publishing every few minutes, cannot afford. A published particle is its input
particle (every column as the input set stores it) with a class and a 2D alignment, so pwem
writes one member of each table (the template: its columns, names and constant values are
pwem's own) and SQLite copies the others from the input set's sqlite beside it.

The layout relied on is pyworkflow's flat sqlite (``pyworkflow.mapper.sqlite``): a table
``<prefix>Classes`` maps each attribute label to a column of ``<prefix>Objects``, whose first
columns are ``id, enabled, label, comment, creation``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

OBJECT_COLUMNS = ("id", "enabled", "label", "comment", "creation")
CLASS_ID_LABEL = "_classId"
MATRIX_LABEL = "_transform._matrix"


def matrix_texts(matrices: np.ndarray) -> list[str]:
    """Each 4x4 matrix as pwem's ``Matrix`` stores it (the JSON of its nested lists)."""
    return [f"[[{a!r}, {b!r}, {c!r}, {d!r}], [{e!r}, {f!r}, {g!r}, {h!r}], "
            f"[{i!r}, {j!r}, {k!r}, {m!r}], [{n!r}, {o!r}, {p!r}, {q!r}]]"
            for a, b, c, d, e, f, g, h, i, j, k, m, n, o, p, q in matrices.reshape(-1, 16).tolist()]


@contextlib.contextmanager
def _connect(path: str) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(path, timeout=60)
    try:
        yield connection
    finally:
        connection.close()


def holds_written_set(path: str) -> bool:
    """Whether the sqlite ``path`` holds a set as pyworkflow writes one: with its ``Properties``
    table. pyworkflow creates a set's tables with its first item, so the file of a set that
    never had one (an ``outputParticles`` while no class is selected) is there, but empty, and
    reading its properties back fails with "no such table: Properties". Opened read-only: a
    missing file is not created."""
    if not os.path.exists(path):
        return False
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=60)) as connection:
        return connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                  "AND name = 'Properties'").fetchone() is not None


def _columns(connection: sqlite3.Connection, table: str) -> dict[str, str]:
    """label -> column of a flat sqlite's ``...Classes`` table."""
    return {label: column for label, column in
            connection.execute(f'SELECT label_property, column_name FROM {table}')
            if label != "self"}


def copy_members(target: str, prefix: str, source: str, members: pd.DataFrame,
                 template_id: int) -> int:
    """Insert into ``target``'s ``<prefix>Objects`` one row per row of ``members`` (index: the
    particle id in ``source``'s set; columns ``cls`` and ``matrix``, see :func:`matrix_texts`):
    the source particle's values, its class and alignment, and for the columns the source set
    has not (its acquisition, for one) the value of the template member ``template_id``, which
    pwem wrote. Returns the number of rows inserted; ids already in the table are skipped, and
    disabled source particles too (as ``SetOfClasses.classifyItems`` skips them)."""
    if members.empty:
        return 0
    with _connect(target) as connection:
        connection.execute("ATTACH DATABASE ? AS source", (source,))
        wanted = _columns(connection, f"main.{prefix}Classes")
        given = _columns(connection, "source.Classes")
        template = connection.execute(
            f"SELECT * FROM main.{prefix}Objects WHERE id = ?", (template_id,)).fetchone()
        if template is None:
            raise ValueError(f"{target}: no template member {template_id} in {prefix}Objects")
        names = [d[0] for d in connection.execute(
            f"SELECT * FROM main.{prefix}Objects LIMIT 0").description]
        template_values = dict(zip(names, template, strict=True))
        columns, expressions, constants = list(OBJECT_COLUMNS), \
            [f"s.{c}" for c in OBJECT_COLUMNS], []
        for label, column in wanted.items():
            columns.append(column)
            if label == CLASS_ID_LABEL:
                expressions.append("m.cls")
            elif label == MATRIX_LABEL:
                expressions.append("m.matrix")
            elif label in given:
                expressions.append(f"s.{given[label]}")
            else:
                expressions.append("?")
                constants.append(template_values[column])
        connection.execute("CREATE TEMP TABLE members (id INTEGER PRIMARY KEY, cls INTEGER, "
                           "matrix TEXT)")
        connection.executemany(
            "INSERT INTO temp.members VALUES (?, ?, ?)",
            zip(members.index.astype(np.int64).tolist(),
                members["cls"].astype(np.int64).tolist(), members["matrix"], strict=True))
        before = connection.total_changes
        connection.execute(
            f"INSERT OR IGNORE INTO main.{prefix}Objects ({', '.join(columns)}) "
            f"SELECT {', '.join(expressions)} FROM temp.members AS m "
            f"JOIN source.Objects AS s ON s.id = m.id WHERE s.enabled ORDER BY m.id", constants)
        inserted = connection.total_changes - before
        connection.commit()
    return inserted


def set_class_sizes(target: str) -> dict[int, int]:
    """Count each class's members into its ``_size`` in a set of classes' ``Objects``."""
    with _connect(target) as connection:
        size_column = _columns(connection, "Classes")["_size"]
        numbers = [row[0] for row in connection.execute("SELECT id FROM Objects")]
        sizes = {number: connection.execute(
            f"SELECT COUNT(*) FROM Class{number:03d}_Objects").fetchone()[0]
            for number in numbers}
        connection.executemany(f"UPDATE Objects SET {size_column} = ? WHERE id = ?",
                               [(size, number) for number, size in sizes.items()])
        connection.commit()
    return sizes


def item_ids(path: str, prefix: str = "") -> np.ndarray:
    """The ids of a flat sqlite's items, sorted."""
    with _connect(path) as connection:
        rows = connection.execute(f"SELECT id FROM {prefix}Objects ORDER BY id").fetchall()
    return np.array([row[0] for row in rows], dtype=np.int64)


def disabled_ids(path: str) -> set[int]:
    """The ids of a set's disabled items (almost always none)."""
    with _connect(path) as connection:
        return {row[0] for row in connection.execute("SELECT id FROM Objects WHERE NOT enabled")}


def template_members(members: pd.DataFrame, disabled: set[int]) -> pd.DataFrame:
    """The first member of each class (by id) whose source particle is enabled (not in
    ``disabled``, :func:`disabled_ids`): the one pwem writes, whose row is the template of its
    class's table (see :func:`copy_members`)."""
    enabled = members[~members.index.isin(disabled)].sort_index()
    return enabled.groupby("cls").head(1)


def copy_class_members(target: str, source: str, members: pd.DataFrame,
                       templates: pd.DataFrame) -> dict[int, int]:
    """Copy every member of ``members`` into the set of classes ``target``, in which pwem wrote
    the ``templates`` (:func:`template_members`); returns each class's size, written into it."""
    for number, template_id in zip(templates["cls"], templates.index, strict=True):
        copy_members(target, f"Class{int(number):03d}_", source,
                     members[members["cls"] == number], int(template_id))
    return set_class_sizes(target)
