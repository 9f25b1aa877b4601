"""Twenty JSON schemas for the structured-output tests: nested objects, arrays, enums, required fields,
bounded numbers, patterned strings. Lengths are bounded so that even a random model finishes them."""

SHORT = {"type": "string", "maxLength": 6}

SCHEMAS: list[dict] = [
    {"type": "object", "properties": {"name": SHORT}, "required": ["name"]},
    {
        "type": "object",
        "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["age"],
    },
    {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "none": {"type": "null"}},
        "required": ["ok", "none"],
    },
    {"enum": ["red", "green", "blue"]},
    {
        "type": "array",
        "items": {"type": "integer", "minimum": -5, "maximum": 5},
        "minItems": 1,
        "maxItems": 4,
    },
    {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green"]}, "size": {"enum": [1, 2, 3]}},
        "required": ["color", "size"],
    },
    {
        "type": "object",
        "properties": {
            "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{2}$"},
        },
        "required": ["zip", "code"],
    },
    {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 999}, "nick": SHORT},
                "required": ["id", "nick"],
            }
        },
        "required": ["user"],
    },
    {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}},
        "required": ["tags"],
    },
    {"type": "integer", "minimum": 10, "maximum": 99},
    {"type": "boolean"},
    {
        "type": "object",
        "properties": {
            "point": {
                "type": "array",
                "prefixItems": [
                    {"type": "integer", "minimum": 0, "maximum": 9},
                    {"type": "integer", "minimum": 0, "maximum": 9},
                ],
                "minItems": 2,
                "maxItems": 2,
            }
        },
        "required": ["point"],
    },
    {
        "type": "object",
        "properties": {
            "level": {"type": "string", "enum": ["low", "mid", "high"]},
            "note": {"type": "string", "maxLength": 4},
        },
        "required": ["level"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string", "pattern": "^[a-z]{3}$"},
                        "qty": {"type": "integer", "minimum": 1, "maximum": 9},
                    },
                    "required": ["sku", "qty"],
                },
                "minItems": 1,
                "maxItems": 2,
            }
        },
        "required": ["items"],
    },
    {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"enum": ["none"]}]},
    {
        "type": "object",
        "properties": {"kind": {"const": "event"}, "day": {"type": "integer", "minimum": 1, "maximum": 31}},
        "required": ["kind", "day"],
    },
    {"type": "string", "pattern": "^(yes|no)$"},
    {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 3},
    {
        "type": "object",
        "properties": {
            "a": {
                "type": "object",
                "properties": {
                    "b": {"type": "object", "properties": {"c": {"enum": [1, 2]}}, "required": ["c"]}
                },
                "required": ["b"],
            }
        },
        "required": ["a"],
    },
    {
        "type": "object",
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9a-f]{4}$"},
            "flags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 2},
            "score": {"type": "integer", "minimum": -100, "maximum": 100},
        },
        "required": ["id", "flags", "score"],
    },
]
