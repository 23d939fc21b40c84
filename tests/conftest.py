"""Shared fixtures: built models, found or built once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from models.manifest import ModelError, ModelManifest, load_model


def _intact_or_build(name: str, build, tmp_path_factory) -> ModelManifest:
    """The intact copy in $EDGEGATE_MODEL_DIR (what `make models` built), otherwise converted
    from the installed wheel into a temporary folder."""
    built = os.environ.get("EDGEGATE_MODEL_DIR")
    if built:
        try:
            m = load_model(Path(built), name)
            if not m.verify():
                return m
        except ModelError:
            pass
    return build(tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def mtcnn_manifest(tmp_path_factory) -> ModelManifest:
    from models import mtcnn

    return _intact_or_build(mtcnn.MODEL_NAME, mtcnn.build, tmp_path_factory)


@pytest.fixture(scope="session")
def dlib_resnet_manifest(tmp_path_factory) -> ModelManifest:
    from models import dlib_resnet

    return _intact_or_build(dlib_resnet.MODEL_NAME, dlib_resnet.build, tmp_path_factory)


@pytest.fixture(scope="session")
def default_pipeline(mtcnn_manifest, dlib_resnet_manifest):
    """The embedded default vision pipeline (MTCNN + dlib ResNet, flip-averaged)."""
    from vision.detect import load_detector
    from vision.embed import load_embedder
    from vision.pipeline import FacePipeline

    return FacePipeline(load_detector(mtcnn_manifest, min_face=40), load_embedder(dlib_resnet_manifest, flip=True))


# ----- the central's two stores ------------------------------------------------------------
# Every central test that takes `central_database` runs twice: on the embedded SQLite file and on
# a real PostgreSQL server. The server is a throwaway cluster this session starts itself
# (tools/pg_cluster.py: initdb + pg_ctl on a free loopback port, as an unprivileged user), or the
# one EDGEGATE_TEST_PG_DSN points at. It is never skipped: a machine without PostgreSQL fails
# these tests with the reason.

@pytest.fixture(scope="session")
def pg_admin_dsn():
    """A superuser connection string to a PostgreSQL server for this test session."""
    explicit = os.environ.get("EDGEGATE_TEST_PG_DSN")
    if explicit:
        yield explicit
        return
    from tools.pg_cluster import temp_cluster

    cluster = temp_cluster()
    try:
        yield cluster.dsn()
    finally:
        from sync.central_pg import close_pools

        close_pools()
        cluster.remove()


@pytest.fixture
def pg_database(pg_admin_dsn):
    """A new, migrated PostgreSQL central database for one test, dropped afterwards."""
    import uuid

    from sync.central_migrate import migrate_schema
    from sync.central_pg import close_pool
    from tools.pg_cluster import create_database, drop_database

    name = f"edgegate_test_{uuid.uuid4().hex[:12]}"
    dsn = create_database(pg_admin_dsn, name)
    migrate_schema(dsn)
    yield dsn
    close_pool(dsn)
    drop_database(pg_admin_dsn, name)
    # The database's default template key (sync.central_seal) lives on this machine, not in the
    # database: one per test database, so it goes with it.
    from sync.central_seal import default_template_key_file

    default_template_key_file(dsn).unlink(missing_ok=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def central_database(request, tmp_path):
    """The central's `database` setting: a SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "central.db")
    return request.getfixturevalue("pg_database")


@pytest.fixture
def central(central_database):
    """A Central on each store (sqlite, postgresql); test files may define their own."""
    from sync.central import Central

    c = Central(central_database)
    yield c
    c.close()
