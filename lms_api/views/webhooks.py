from pyramid.view import view_defaults

from lms_api import webhooks
from lms_api.errors import ErrorCode
from lms_api.openapi import WEBHOOK_SECRET
from lms_api.schemas.webhooks import DeliveryAnswerSchema, MoodleEventDelivery
from lms_api.security import Scope
from lms_api.views import ApiViews, api_routes, api_view


@api_routes({"api.moodle.webhooks.moodle": webhooks.WEBHOOK_PATH}, enabled_by="webhook_secret")
@view_defaults(route_name="api.moodle.webhooks.moodle")
class WebhookViews(ApiViews):
    @api_view(
        request_method="POST",
        permission=Scope.MOODLE_EVENTS,
        answers=DeliveryAnswerSchema(),
        errors=(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            ErrorCode.INVALID_JSON,
            ErrorCode.BODY_TOO_LARGE,
            ErrorCode.EVENTS_UNPUBLISHED,
        ),
        credentials=WEBHOOK_SECRET,
        own_body=MoodleEventDelivery(),
        takes_idempotency_key=False,  # deliveries are deduplicated by Moodle's own fields
    )
    def receive(self) -> object:
        """A Moodle event, as the Event Trigger plugin's "HTTP post" step sends it: form-encoded, or a JSON object
        ("JSON encode"), with `eventname` and the fields its row of the events table needs (README: Events in).

        Authenticated by `WEBHOOK_SECRET`: `Authorization: Bearer <secret>`, or `X-Signature: sha256=<hex>` (the
        HMAC-SHA256 of `<X-Webhook-Timestamp>.<body>`, within 300 s). Always 200 once read: handled (what was
        dropped and published), `ignored` (an event the table does not know) or `duplicate` (the same event within
        the hour); the route answers 404 while `WEBHOOK_SECRET` is unset.
        """
        delivery = webhooks.read_delivery(self.request)
        self.request.audit_targets["event"] = delivery["eventname"]
        return webhooks.Webhook.of(self.request, self.moodle).receive(delivery)
