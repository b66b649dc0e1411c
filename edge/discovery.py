"""Home Assistant MQTT discovery documents for a node.

Home Assistant creates entities from retained JSON documents on
``<discovery_prefix>/<component>/<node_id>/<object_id>/config``
(https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery). A node announces one
device with:

* availability: the node's retained ``status`` (``online`` / ``offline``, the Last Will);
* ``binary_sensor`` *anomaly* (device class ``problem``): on while the latest
  ``event/anomaly`` says ``anomalous``, with the event's fields as attributes;
* ``sensor`` *anomaly score*: the latest ``anomaly_score``;
* ``event`` *keyword*: one event per ``event/keyword`` message (``event_type`` is the keyword;
  only while keywords are enrolled);
* diagnostic sensors (``entity_category: diagnostic``) from ``heartbeat`` and ``state``:
  input level, CPU, spooled events, dropped events, uptime, config hash, and a
  ``binary_sensor`` *audio fault* (device lost, silence, clipping).

The discovery topics use the node id as ``<node_id>`` (the ACL example in
``firmware_config/deploy/hark.acl`` lets a node write only its own); unique ids include the
site, so two sites' nodes never collide.
"""
from __future__ import annotations

import json

__all__ = ["discovery_messages"]


def discovery_messages(cfg, keywords: list[str], sw_version: str = "") -> list[tuple[str, str]]:
    """The retained discovery documents of a node.

    Parameters
    ----------
    cfg : firmware_config.schema.NodeConfig
        Uses ``node``, ``mqtt.prefix`` and ``homeassistant``.
    keywords : list of str
        Enrolled keywords (the keyword event entity's ``event_types``); empty removes that
        entity (an empty retained document deletes it in Home Assistant).
    sw_version : str
        Shown on the device page (e.g. the model ids).

    Returns
    -------
    list of (topic, payload)
        Empty when ``homeassistant.enabled`` is false.
    """
    ha = cfg.homeassistant
    if not ha.enabled:
        return []
    root = cfg.topic_root
    uid = f"hark_{cfg.node.site}_{cfg.node.id}"
    device = {"identifiers": [uid], "name": f"hark {cfg.node.site}/{cfg.node.id}",
              "manufacturer": "hark", "model": "acoustic monitoring node"}
    if sw_version:
        device["sw_version"] = sw_version
    common = {"availability_topic": f"{root}/status", "payload_available": "online",
              "payload_not_available": "offline", "device": device}

    def doc(component: str, object_id: str, **fields) -> tuple[str, str]:
        body = {"unique_id": f"{uid}_{object_id}", **common, **fields}
        return (f"{ha.discovery_prefix}/{component}/{cfg.node.id}/{object_id}/config",
                json.dumps(body, sort_keys=True))

    diag = {"entity_category": "diagnostic"}
    out = [
        doc("binary_sensor", "anomaly", name="Anomaly", device_class="problem",
            state_topic=f"{root}/event/anomaly",
            value_template="{{ 'ON' if value_json.anomalous else 'OFF' }}",
            json_attributes_topic=f"{root}/event/anomaly"),
        doc("sensor", "anomaly_score", name="Anomaly score", state_class="measurement",
            state_topic=f"{root}/event/anomaly", value_template="{{ value_json.anomaly_score }}",
            suggested_display_precision=4),
        doc("sensor", "level", name="Input level", unit_of_measurement="dBFS",
            state_class="measurement", state_topic=f"{root}/heartbeat",
            value_template="{{ value_json.level_dbfs }}", **diag),
        doc("sensor", "cpu", name="CPU", unit_of_measurement="%", state_class="measurement",
            state_topic=f"{root}/heartbeat", value_template="{{ value_json.cpu_percent }}",
            **diag),
        doc("sensor", "spooled_events", name="Spooled events", state_class="measurement",
            state_topic=f"{root}/heartbeat", value_template="{{ value_json.queue_depth }}",
            **diag),
        doc("sensor", "dropped_events", name="Dropped events", state_class="total_increasing",
            state_topic=f"{root}/heartbeat", value_template="{{ value_json.events_dropped }}",
            **diag),
        doc("sensor", "uptime", name="Uptime", device_class="duration", unit_of_measurement="s",
            state_class="measurement", state_topic=f"{root}/heartbeat",
            value_template="{{ value_json.uptime_s }}", **diag),
        doc("sensor", "config", name="Config", state_topic=f"{root}/state",
            value_template="{{ value_json.config_sha256[:12] }}", **diag),
        doc("binary_sensor", "audio_fault", name="Audio fault", device_class="problem",
            state_topic=f"{root}/state",
            value_template="{{ 'ON' if value_json.audio.faults else 'OFF' }}",
            json_attributes_topic=f"{root}/state",
            json_attributes_template="{{ value_json.audio | tojson }}", **diag),
    ]
    kw_topic = f"{ha.discovery_prefix}/event/{cfg.node.id}/keyword/config"
    if keywords:
        out.append(doc("event", "keyword", name="Keyword", state_topic=f"{root}/event/keyword",
                       event_types=sorted(keywords)))
    else:
        out.append((kw_topic, ""))
    return out
