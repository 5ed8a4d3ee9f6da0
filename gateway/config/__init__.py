"""Load and validate the gateway's YAML configuration.

Field techs edit this file on a live concentrator, so every problem is reported at once,
with ``file:line:column: key.path: expected X, got Y``, and bad input never produces a
Python traceback. Positions come from the YAML node tree (``yaml.compose``), not from
``safe_load``, which throws them away.

Every section (gateway, store, uplink, logging and each driver entry) is described by the
same declarative table of :class:`FieldSpec` and checked by one walker. A driver's option
table is its module's ``SCHEMA``, found through :mod:`gateway.drivers.registry` on first use
(only the modules of the types a config names are imported), or one given to
:func:`register_driver_schema`; so the loader knows nothing about dlms, mbus, wmbus or
zigbee. Options may nest: a field can hold a sub-mapping (:func:`mapping`), a list of values
or of mappings (:func:`list_of`, e.g. a driver's meters) or free-form tags
(:func:`any_mapping`), all walked the same way, so an error deep inside still reads
``file:line:col: drivers[0].meters[3].id: ...``.

``null`` (or an empty value) means "use the default". Types are strict: a quoted
``"8883"`` is not a port. String-valued keys take plain scalars as written, so
``id: 0001`` stays ``"0001"`` and ``tls_version: 1.2`` stays ``"1.2"`` instead of being
turned into a number by YAML.

Layout: ``schema`` (the tables) and ``checks`` (value types) are the engine; ``walker``
checks a YAML file against them; one module per section (``core``: gateway, store and
logging; ``uplink``, ``control``, ``metrics``, ``edge``, ``fleet``; ``serial``: the port
tables drivers embed; ``drivers``: driver schemas) holds its schema and its result
dataclass; ``result`` is the whole :class:`Config`; ``loader`` is :func:`load_config`.
"""

from .checks import (ID, ID_PATTERN, MAX_SIZE, PATH, any_mapping, boolean, file_field,
                     hex_bytes, integer, list_of, mapping, number, one_of, one_of_ints,
                     one_of_keys, scalar, size, text, time_zone)
from .control import CONTROL_SCHEMA, ControlConfig
from .core import (GATEWAY_SCHEMA, LOGGING_SCHEMA, STORE_SCHEMA, GatewayConfig, LoggingConfig,
                   StoreConfig)
from .drivers import (DRIVER_SCHEMAS, DriverConfig, driver_schema, driver_types, load_schemas,
                      register_driver_schema)
from .edge import (CLOCK_SCHEMA, DIAG_THRESHOLDS_SCHEMA, EDGE_SCHEMA, RBE_SCHEMA,
                   ROLLOVER_SCHEMA, ClockTrust, DiagThresholds, EdgeConfig, ReportByException,
                   RolloverRule)
from .fleet import FLEET_SCHEMA, FleetConfig
from .issues import ConfigError, ConfigIssue
from .loader import SECTIONS, TOP_LEVEL_KEYS, load_config
from .metrics import METRICS_SCHEMA, MetricsConfig
from .result import Config
from .schema import REQUIRED, Check, CrossCheck, DriverSchema, FieldSpec, Schema
from .serial import RS485_SCHEMA, SERIAL_SCHEMA
from .sizes import format_size, parse_size
from .uplink import UPLINK_SCHEMA, UplinkConfig
from .walker import MAX_CONFIG_BYTES

__all__ = [
    "CLOCK_SCHEMA", "CONTROL_SCHEMA", "DIAG_THRESHOLDS_SCHEMA", "DRIVER_SCHEMAS", "EDGE_SCHEMA",
    "FLEET_SCHEMA", "GATEWAY_SCHEMA", "ID", "ID_PATTERN", "LOGGING_SCHEMA", "MAX_CONFIG_BYTES",
    "MAX_SIZE", "METRICS_SCHEMA", "PATH", "RBE_SCHEMA", "REQUIRED", "ROLLOVER_SCHEMA",
    "RS485_SCHEMA", "SECTIONS", "SERIAL_SCHEMA", "STORE_SCHEMA", "TOP_LEVEL_KEYS",
    "UPLINK_SCHEMA", "Check", "ClockTrust", "Config", "ConfigError", "ConfigIssue",
    "ControlConfig", "CrossCheck", "DiagThresholds", "DriverConfig", "DriverSchema",
    "EdgeConfig", "FieldSpec", "FleetConfig", "GatewayConfig", "LoggingConfig", "MetricsConfig",
    "ReportByException", "RolloverRule", "Schema", "StoreConfig", "UplinkConfig", "any_mapping",
    "boolean", "driver_schema", "driver_types", "file_field", "format_size", "hex_bytes",
    "integer", "list_of", "load_config", "load_schemas", "mapping", "number", "one_of",
    "one_of_ints", "one_of_keys", "parse_size", "register_driver_schema", "scalar", "size",
    "text", "time_zone",
]
