"""Hand-written JSON schemas for the custom resources the chart renders.

No PyPI package ships the cert-manager or prometheus-operator CRDs, so these
cover, field by field, what the chart uses, transcribed from the upstream CRD
OpenAPI schemas (cert-manager.io/v1 Certificate, monitoring.coreos.com/v1
ServiceMonitor and PrometheusRule). Unknown fields are rejected (strict), so a
typo in a template fails here even though the API server would silently prune it.
"""

from __future__ import annotations

from typing import Any

_STR: dict[str, Any] = {"type": "string"}
_STR_MAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
_GO_DURATION: dict[str, Any] = {
    "type": "string",
    "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$",
}
_PROM_DURATION: dict[str, Any] = {
    "type": "string",
    # The prometheus-operator CRD's Duration pattern.
    "pattern": (
        r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
        r"(([0-9]+)ms)?)$"
    ),
}

_METADATA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {
            "type": "string",
            "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
            "maxLength": 253,
        },
        "namespace": _STR,
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
    },
    "additionalProperties": False,
}


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
        "additionalProperties": False,
    }


_KEY_USAGES = [
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
]

CERTIFICATE = _resource(
    "cert-manager.io/v1",
    "Certificate",
    {
        "type": "object",
        "required": ["secretName", "issuerRef"],
        "properties": {
            "secretName": _STR,
            "secretTemplate": {
                "type": "object",
                "properties": {"labels": _STR_MAP, "annotations": _STR_MAP},
                "additionalProperties": False,
            },
            "duration": _GO_DURATION,
            "renewBefore": _GO_DURATION,
            "commonName": {"type": "string", "maxLength": 64},
            "isCA": {"type": "boolean"},
            "dnsNames": {"type": "array", "items": _STR},
            "usages": {"type": "array", "items": {"enum": _KEY_USAGES}},
            "privateKey": {
                "type": "object",
                "properties": {
                    "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                    "size": {"type": "integer"},
                    "rotationPolicy": {"enum": ["Never", "Always"]},
                    "encoding": {"enum": ["PKCS1", "PKCS8"]},
                },
                "additionalProperties": False,
            },
            "issuerRef": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": _STR, "kind": _STR, "group": _STR},
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
)

_RELABEL: dict[str, Any] = {
    "type": "object",
    "properties": {
        "action": {
            "enum": [
                "replace",
                "Replace",
                "keep",
                "Keep",
                "drop",
                "Drop",
                "hashmod",
                "HashMod",
                "labelmap",
                "LabelMap",
                "labeldrop",
                "LabelDrop",
                "labelkeep",
                "LabelKeep",
                "lowercase",
                "Lowercase",
                "uppercase",
                "Uppercase",
                "keepequal",
                "KeepEqual",
                "dropequal",
                "DropEqual",
            ]
        },
        "modulus": {"type": "integer"},
        "regex": _STR,
        "replacement": _STR,
        "separator": _STR,
        "sourceLabels": {
            "type": "array",
            "items": {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"},
        },
        "targetLabel": _STR,
    },
    "additionalProperties": False,
}

SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    {
        "type": "object",
        "required": ["selector", "endpoints"],
        "properties": {
            "namespaceSelector": {
                "type": "object",
                "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": _STR},
                },
                "additionalProperties": False,
            },
            "selector": {
                "type": "object",
                "properties": {"matchLabels": _STR_MAP, "matchExpressions": {"type": "array"}},
                "additionalProperties": False,
            },
            "endpoints": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "port": _STR,
                        "path": _STR,
                        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                        "interval": _PROM_DURATION,
                        "scrapeTimeout": _PROM_DURATION,
                        "relabelings": {"type": "array", "items": _RELABEL},
                        "metricRelabelings": {"type": "array", "items": _RELABEL},
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    },
)

_RULE: dict[str, Any] = {
    "type": "object",
    "required": ["expr"],
    "properties": {
        "alert": _STR,
        "record": _STR,
        "expr": {"type": ["string", "integer"]},
        "for": _PROM_DURATION,
        "keep_firing_for": _PROM_DURATION,
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
    },
    "additionalProperties": False,
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
}

PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    {
        "type": "object",
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": _PROM_DURATION,
                        "limit": {"type": "integer"},
                        "partial_response_strategy": _STR,
                        "query_offset": _PROM_DURATION,
                        "labels": _STR_MAP,
                        "rules": {"type": "array", "items": _RULE},
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    },
)

# cert-manager.io/v1 Issuer: only the selfSigned and ca issuer types the injector uses.
ISSUER = _resource(
    "cert-manager.io/v1",
    "Issuer",
    {
        "type": "object",
        "properties": {
            "selfSigned": {
                "type": "object",
                "properties": {"crlDistributionPoints": {"type": "array", "items": _STR}},
                "additionalProperties": False,
            },
            "ca": {
                "type": "object",
                "required": ["secretName"],
                "properties": {
                    "secretName": _STR,
                    "crlDistributionPoints": {"type": "array", "items": _STR},
                    "ocspServers": {"type": "array", "items": _STR},
                    "issuingCertificateURLs": {"type": "array", "items": _STR},
                },
                "additionalProperties": False,
            },
        },
        "minProperties": 1,
        "maxProperties": 1,
        "additionalProperties": False,
    },
)

BY_KIND: dict[tuple[str, str], dict[str, Any]] = {
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
    ("cert-manager.io/v1", "Issuer"): ISSUER,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
}
