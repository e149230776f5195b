// The gateway as a Python 3.11 Function App on the Flex Consumption plan, running as the user-assigned
// identity: the host's storage, the deployment package, Cosmos DB, the usage tables and Application Insights
// are all reached with it, and Key Vault references in app settings are resolved with it.
param name string
param planName string
param location string
param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainerUrl string
param appInsightsConnectionString string
param cosmosEndpoint string
param usageUrl string
param gatewayConfig string
param healthCron string
param usageSweepCron string
param keyVaultName string
@description('App setting name -> Key Vault secret name, e.g. {"AOAI_EASTUS_KEY": "aoai-eastus-key"}.')
param keyVaultSecrets object
param maximumInstanceCount int
param instanceMemoryMB int
param httpPerInstanceConcurrency int
param tags object = {}

// What the code reads (tests/infra/test_drift.py keeps this list and the code in step).
var settings = {
  // The Functions host's own storage, by identity (no connection string: shared keys are off).
  AzureWebJobsStorage__accountName: storageAccountName
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  // DefaultAzureCredential (Cosmos DB, Entra backends) picks the user-assigned identity by this.
  AZURE_CLIENT_ID: identityClientId
  AIGW_IDENTITY_CLIENT_ID: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  COSMOS_ENDPOINT: cosmosEndpoint
  AIGW_USAGE_URL: usageUrl
  AIGW_CONFIG: gatewayConfig
  AIGW_HEALTH_CRON: healthCron
  AIGW_USAGE_SWEEP_CRON: usageSweepCron
  // HTTP streaming (azurefunctions-extensions-http-fastapi) needs the worker to index functions at start.
  PYTHON_ENABLE_INIT_INDEXING: '1'
}
// One list of name/value pairs (plain loops, no lambdas: checkov's Bicep parser reads those too).
var plainSettings = [
  for setting in items(settings): {
    name: setting.key
    value: setting.value
  }
]
var secretSettings = [
  for secret in items(keyVaultSecrets): {
    name: secret.key
    value: '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=${secret.value})'
  }
]

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  // azd finds the app to publish service `api` to by this tag.
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: concat(plainSettings, secretSettings)
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
