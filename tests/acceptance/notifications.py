"""Cloud Storage Pub/Sub notifications, as Google sends them
(https://cloud.google.com/storage/docs/pubsub-notifications): attributes
notificationConfig, eventType, payloadFormat=JSON_API_V1, bucketId,
objectId, objectGeneration, eventTime; data = the object resource (JSON
API v1 representation, numbers as strings)."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime


def object_resource(bucket: str, name: str, generation: int, content: bytes) -> dict[str, str]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "kind": "storage#object",
        "id": f"{bucket}/{name}/{generation}",
        "selfLink": f"https://www.googleapis.com/storage/v1/b/{bucket}/o/{name}",
        "name": name,
        "bucket": bucket,
        "generation": str(generation),
        "metageneration": "1",
        "contentType": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "timeCreated": now,
        "updated": now,
        "storageClass": "STANDARD",
        "timeStorageClassUpdated": now,
        "size": str(len(content)),
        "md5Hash": base64.b64encode(hashlib.md5(content).digest()).decode(),
        "mediaLink": f"https://storage.googleapis.com/download/storage/v1/b/{bucket}/o/{name}"
        f"?generation={generation}&alt=media",
        "crc32c": "AAAAAA==",
        "etag": "CKih16GjycICEAE=",
    }


def notification(
    bucket: str,
    name: str,
    generation: int,
    content: bytes = b"",
    event_type: str = "OBJECT_FINALIZE",
) -> tuple[bytes, dict[str, str]]:
    """(data, attributes) of the notification of one event on one object."""
    resource = object_resource(bucket, name, generation, content)
    attributes = {
        "notificationConfig": f"projects/_/buckets/{bucket}/notificationConfigs/1",
        "eventType": event_type,
        "payloadFormat": "JSON_API_V1",
        "bucketId": bucket,
        "objectId": name,
        "objectGeneration": str(generation),
        "eventTime": resource["updated"],
    }
    return json.dumps(resource).encode(), attributes
