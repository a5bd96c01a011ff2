from pyramid.view import view_defaults

from lms_api.schemas.messages import MessagesSentSchema, SendMessagesBody
from lms_api.security import Scope
from lms_api.services import messages
from lms_api.views import ApiViews, api_routes, api_view


@api_routes({"api.moodle.messages": "/api/moodle/messages"})
@view_defaults(route_name="api.moodle.messages")
class MessageViews(ApiViews):
    @api_view(
        request_method="POST",
        permission=Scope.MESSAGES_WRITE,
        body=SendMessagesBody(),
        answers=MessagesSentSchema(),
    )
    def send_messages(self) -> object:
        """Send 1 to 100 personal messages from the gateway's Moodle user (instant messages, not notifications).

        Each message's outcome is answered in the order asked: `sent` with Moodle's `msgid`, or not, with Moodle's
        `error` (a recipient Moodle does not have, a text over 4,096 bytes): a refused message is not an error of the
        request. Never sent twice: a retry after an unknown outcome, with the same `Idempotency-Key`, is answered
        the first attempt's answer.
        """
        wanted = self.request.validated.body["messages"]
        self.request.audit_targets.update(
            user_ids=sorted({message["touserid"] for message in wanted}), messages=len(wanted)
        )
        return messages.send_messages(self.moodle, wanted)
