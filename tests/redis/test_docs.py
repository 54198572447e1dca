"""docs/configuration.md lists every option of the Redis plugin with its real default."""

from __future__ import annotations

import attrs
from squirrel_models_redis import RedisOptions

from tests.docs.test_configuration_documented import ROW, section, toml


def test_every_option_is_documented_with_its_default() -> None:
    rows = dict(ROW.findall(section("RedisOptions")))
    fields = {f.name: f.default for f in attrs.fields(RedisOptions)}
    assert set(rows) == set(fields)
    for name, default in fields.items():
        assert rows[name].strip() == toml(default), name
