"""Site info: no input; the output is Moodle's site info without its secret fields."""

from marshmallow import fields

from lms_api.schemas.base import Records, RequestSchema, ResponseSchema


class SiteInfoQuery(RequestSchema):
    """``GET /api/moodle/siteinfo`` takes no parameters."""


class FunctionSchema(ResponseSchema):
    name = fields.String(required=True)
    version = fields.String()


class AdvancedFeatureSchema(ResponseSchema):
    name = fields.String(required=True)
    value = fields.Integer()


class SiteInfoSchema(ResponseSchema):
    """Every field of ``core_webservice_get_site_info`` except ``userprivateaccesskey``, a secret that opens
    the token user's files through ``tokenpluginfile.php``."""

    sitename = fields.String()
    username = fields.String()
    firstname = fields.String()
    lastname = fields.String()
    fullname = fields.String()
    lang = fields.String()
    userid = fields.Integer()
    siteurl = fields.String()
    userpictureurl = fields.String()
    functions = Records(FunctionSchema)
    downloadfiles = fields.Integer()
    uploadfiles = fields.Integer()
    release = fields.String()
    version = fields.String()
    mobilecssurl = fields.String()
    advancedfeatures = Records(AdvancedFeatureSchema)
    usercanmanageownfiles = fields.Boolean()
    userquota = fields.Integer()
    usermaxuploadfilesize = fields.Integer()
    userhomepage = fields.Integer()
    userhomepageurl = fields.String()
    siteid = fields.Integer()
    sitecalendartype = fields.String()
    usercalendartype = fields.String()
    userissiteadmin = fields.Boolean()
    theme = fields.String()
    limitconcurrentlogins = fields.Integer()
    usersessionscount = fields.Integer()
    policyagreed = fields.Integer()
