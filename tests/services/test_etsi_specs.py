"""The shared ETSI 004/014 rules (services/sdqkd/etsi00x_spec.py) that the portal and the twin both apply."""

from __future__ import annotations

import pytest

from services.sdqkd import etsi004_spec, etsi014_spec


@pytest.mark.parametrize("uri, sae", [
    ("sae://sae-a", "sae-a"), ("qkd://sae-a:443/app", "sae-a"), ("qkd://user:pw@sae-a:8443/x?y#z", "sae-a"),
    ("sae://SAE-Mixed/", "SAE-Mixed"), ("sae-a", "sae-a"), (" sae-a ", "sae-a"), ("qkd://[::1]:443/", "::1"),
])
def test_the_sae_id_is_the_uris_host(uri, sae):
    assert etsi004_spec.sae_from_uri(uri) == sae


@pytest.mark.parametrize("uri", ["", "   ", None, 7, "qkd://", "qkd://:443/app"])
def test_uris_naming_no_sae_are_refused(uri):
    with pytest.raises(etsi004_spec.Etsi004Error):
        etsi004_spec.sae_from_uri(uri)


def test_the_binding_recognises_lower_case_and_refuses_unknown_or_conflicting_fields():
    read = etsi004_spec.read_call
    assert read({"key_stream_id": "k", "INDEX": 2}, etsi004_spec.GET_KEY_FIELDS, "get_key") == {
        "Key_stream_ID": "k", "index": 2}
    assert read(None, etsi004_spec.CLOSE_FIELDS, "close") == {}
    with pytest.raises(etsi004_spec.Etsi004Error, match="unknown field"):
        read({"Key_stream_ID": "k", "qos": {}}, etsi004_spec.CLOSE_FIELDS, "close")
    with pytest.raises(etsi004_spec.Etsi004Error, match="twice"):
        read({"Key_stream_ID": "a", "key_stream_id": "b"}, etsi004_spec.CLOSE_FIELDS, "close")
    with pytest.raises(etsi004_spec.Etsi004Error, match="JSON object"):
        read([1], etsi004_spec.CLOSE_FIELDS, "close")


def test_optional_014_fields_null_means_absent():
    fields = etsi014_spec.key_request_fields({"number": None, "size": None, "additional_slave_SAE_IDs": None,
                                              "extension_mandatory": [{}], "extension_optional": None})
    assert fields == etsi014_spec.KeyRequestFields()
    assert etsi014_spec.unsupported_mandatory([{"a": 1, "b": 2}, {"a": 3}], {"b"}) == ["a"]
    with pytest.raises(etsi014_spec.Etsi014Error):
        etsi014_spec.key_request_fields({"extension_mandatory": {"not": "a list"}})
    with pytest.raises(etsi014_spec.Etsi014Error):
        etsi014_spec.key_request_fields({"additional_slave_SAE_IDs": [True]})
